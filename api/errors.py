"""Errors as the OpenAI error object, with the status that fits each protocol error code.

``_STATUS`` is the one table from protocol error code to HTTP status. A failed request is
the server's fault (5xx); a launch whose model cannot load is the launch's (400: the file,
its format or its settings), which is why loading has its own code.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send

from xb.api.asgi import HTTPMiddleware
from xb.core.errors import XbError
from xb.core.protocol import ErrorCode

log = logging.getLogger("xb.api")

# Which protocol error codes answer with which HTTP status; the OpenAI error type follows
# from the status (``_TYPE``). A test holds every code to a row.
_CODES_BY_STATUS: dict[int, tuple[ErrorCode, ...]] = {
    400: (
        ErrorCode.INVALID_REQUEST,
        ErrorCode.DUPLICATE_MODEL,
        ErrorCode.UNKNOWN_WORKER,
        ErrorCode.LOAD_FAILED,
    ),
    404: (ErrorCode.UNKNOWN_MODEL,),
    429: (ErrorCode.QUEUE_FULL, ErrorCode.QUOTA_EXCEEDED),
    499: (ErrorCode.CANCELLED,),
    500: (ErrorCode.MODEL_FAILED, ErrorCode.INTERNAL),
    503: (
        ErrorCode.NO_REPLICA,
        ErrorCode.WORKER_LOST,
        ErrorCode.LAUNCH_REFUSED,
        ErrorCode.BROKER_UNAVAILABLE,
    ),
}
_TYPE = {400: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error"}
_STATUS: dict[ErrorCode, tuple[int, str]] = {
    code: (status, _TYPE.get(status, "server_error"))
    for status, codes in _CODES_BY_STATUS.items()
    for code in codes
}
RETRY_AFTER_SECONDS = 1


class APIError(XbError):
    """An error to answer with; ``param`` names the offending request field, if any."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int = RETRY_AFTER_SECONDS,
    ) -> None:
        """``retry_after``: the seconds a 429 or 503 tells the client to wait."""
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )
        self.retry_after = retry_after

    @classmethod
    def from_code(
        cls, code: ErrorCode, message: str, param: str | None = None, retry_after: int = 0
    ) -> APIError:
        """``retry_after``: the seconds the broker said to wait; 0: the default."""
        status, kind = _STATUS[code]  # every code has its row (a test holds it)
        wait = retry_after or RETRY_AFTER_SECONDS
        return cls(status, message, type=kind, param=param, code=code.value, retry_after=wait)

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            },
            # Xinference's client reads the message here (FastAPI's HTTPException shape).
            "detail": self.message,
        }

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.status in (429, 503) else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    where = f"'{param}': " if param else ""
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{where}{first.get('msg', 'invalid value')}{more}", param


class CrashGuard(HTTPMiddleware):
    """Answer an unexpected exception with a 500 and keep the connection.

    Starlette's own handler of ``Exception`` answers, then raises the exception again to
    the server, which then drops the connection: the client's next request on it failed
    too. This one, inside it, answers and returns.
    """

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except ClientDisconnect:
            return  # nobody to answer
        except Exception as exc:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                return  # part of an answer is out: the server ends the connection
            error = APIError(500, f"internal error: {exc}", type="server_error")
            await error.response()(scope, receive, send)


def install(app: FastAPI) -> None:
    """Make every error the app answers an OpenAI error object."""
    app.add_middleware(CrashGuard)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"xb has no endpoint {request.url.path}; its endpoints are in its README"
        return APIError(exc.status_code, message, type=kind).response()
