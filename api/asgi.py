"""The shape of the facade's own middleware: plain ASGI, since Starlette's
BaseHTTPMiddleware hides a client's disconnect from the endpoint, which then could not
cancel the generation."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HTTPMiddleware:
    """Passes anything but an HTTP request through; subclasses handle requests in ``http``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
