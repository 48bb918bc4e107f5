"""HTTP around the routes: HEAD and OPTIONS on every path, and CORS for the origins the
operator names (``xb-broker --cors-origin``; none by default, so browsers on other
origins are refused as they are by any server that says nothing).

Plain ASGI, as ``api.body.BodyLimit`` is: Starlette's BaseHTTPMiddleware would hide a client's
disconnect from the streaming endpoints.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xb.api.auth import APIKeys, RequireKey, RouteScopes
from xb.api.body import BodyLimit
from xb.api.errors import APIError


class HeadAndOptions:
    """HEAD answers as GET does, without the body; OPTIONS answers 204 with an ``Allow``
    header naming the path's methods. A CORS preflight is answered before this, by
    ``CORSMiddleware``, where origins are allowed."""

    def __init__(self, app: ASGIApp, routes: FastAPI) -> None:
        self.app = app
        self.routes = routes
        self._methods: list[tuple[re.Pattern[str], set[str]]] | None = None

    def _allowed(self, path: str) -> set[str]:
        """The methods of the routes that match ``path``, read from the OpenAPI schema
        (the one public list of every route, included routers' too)."""
        if self._methods is None:
            self._methods = [
                (re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$"), set(ops))
                for template, ops in self.routes.openapi()["paths"].items()
            ]
        return {m.upper() for pattern, ops in self._methods if pattern.match(path) for m in ops}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await self._options(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)

    async def _options(self, scope: Scope, receive: Receive, send: Send) -> None:
        methods = self._allowed(scope["path"])
        if not methods:
            message = f"xb has no endpoint {scope['path']}; its endpoints are in its README"
            await APIError(404, message).response()(scope, receive, send)
            return
        if "GET" in methods:
            methods.add("HEAD")
        allow = ", ".join(sorted(methods | {"OPTIONS"}))
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [(b"allow", allow.encode()), (b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})


class CORS(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered by the OpenAI error object."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        refused = APIError(400, f"{bytes(response.body).decode()}; see xb-broker --cors-origin")
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return JSONResponse(refused.body(), status_code=400, headers=headers)


def install(app: FastAPI, cors_origins: list[str], keys: APIKeys) -> None:
    """HEAD and OPTIONS everywhere; API keys before anything reads a body; CORS
    (outermost, so errors carry it too) if asked."""
    app.add_middleware(BodyLimit)
    app.add_middleware(HeadAndOptions, routes=app)
    if keys.enabled:
        # The table of scopes is read once, now that every route is in; it refuses a route
        # that declares no scope, so a facade with keys will not start with one.
        app.add_middleware(RequireKey, keys=keys, scopes=RouteScopes(app))
    if cors_origins:
        app.add_middleware(
            CORS,
            allow_origins=cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],  # mirrored back, so Authorization is allowed too
            expose_headers=["Retry-After"],
            max_age=600,
        )
