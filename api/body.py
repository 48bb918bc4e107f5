"""Request bodies: bounded however they arrive, and JSON the protocol can carry.

``BodyLimit`` refuses a body over ``MAX_BODY_BYTES`` with a 413: by its Content-Length
before reading it, and a chunked one (no length given) as soon as it grows past the
limit. ``CheckedRoute`` reads a JSON body once, before the route validates it, and
refuses with a 400 naming the field what no route could carry on: integers outside 64
bits (msgpack cannot encode them), lone surrogates (they are not Unicode, so no UTF-8
encoder takes them), NaN and infinities, and nesting deeper than ``MAX_DEPTH``.
"""

from __future__ import annotations

import email.message
import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message, Receive, Scope, Send

from xb.api.asgi import HTTPMiddleware
from xb.api.errors import APIError

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64  # JSON schemas of tools nest a few levels; nothing xb takes nests 64
INT64 = (-(2**63), 2**63 - 1)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _too_large(size: str) -> APIError:
    return APIError(
        413,
        f"the request body is {size} bytes; at most {MAX_BODY_BYTES} are read",
        code="request_too_large",
    )


class BodyLimit(HTTPMiddleware):
    """Refuse a request body over ``MAX_BODY_BYTES``."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                await _too_large(str(int(length))).response()(scope, receive, send)
                return
        elif b"transfer-encoding" in headers:
            # No length given: read the body here, up to the limit, and hand it on whole.
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > MAX_BODY_BYTES:
                    await _too_large(f"over {size}").response()(scope, receive, send)
                    return
                if not message.get("more_body", False):
                    break
            receive = _replay(b"".join(chunks), receive)
        await self.app(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` first, then what the client sends (a disconnect)."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def problem(value: Any) -> tuple[str, str] | None:
    """The first place in a decoded JSON ``value`` that xb cannot carry: its path (as
    FastAPI names fields, "messages.0.content") and what is wrong there."""
    stack: list[tuple[Any, list[str]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        where = ".".join(path)
        if len(path) > MAX_DEPTH:
            return where, f"nests deeper than {MAX_DEPTH} levels"
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int) and not INT64[0] <= item <= INT64[1]:
            return where, f"{item} does not fit in a 64-bit integer"
        if isinstance(item, float) and not math.isfinite(item):
            return where, "numbers must be finite (JSON has no NaN or Infinity)"
        if isinstance(item, str) and _SURROGATE.search(item):
            return where, "holds a lone surrogate (such as \\ud800), which is not Unicode text"
        if isinstance(item, dict):
            for key, child in item.items():
                if _SURROGATE.search(key):
                    return where, "a key holds a lone surrogate, which is not Unicode text"
                stack.append((child, [*path, key]))
        elif isinstance(item, list):
            stack.extend((child, [*path, str(i)]) for i, child in enumerate(item))
    return None


def _is_json(request: Request) -> bool:
    """Whether FastAPI will read the body as JSON (no content type counts as JSON)."""
    content_type = request.headers.get("content-type")
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def check_json(request: Request) -> APIError | None:
    """Decode the body (Starlette keeps it for the route) and look for what xb refuses."""
    if not await request.body() or not _is_json(request):
        return None
    try:
        value = await request.json()
    except RecursionError:
        return APIError(400, f"the body nests deeper than {MAX_DEPTH} levels", code="invalid_json")
    except UnicodeDecodeError:
        return APIError(400, "the body is not UTF-8 text", code="invalid_json")
    except ValueError:
        return None  # not JSON: the route says so, with where it failed
    found = problem(value)
    if found is None:
        return None
    where, what = found
    return APIError(
        400, f"'{where}': {what}" if where else what, param=where or None, code="invalid_value"
    )


class CheckedRoute(APIRoute):
    """A route whose JSON body is checked by ``check_json`` before it is validated."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            error = await check_json(request)
            if error is not None:
                return error.response()
            return await handler(request)

        return checked


def strict_json(text: str) -> Any:
    """``text`` as JSON, refusing NaN and Infinity (which ``json`` accepts)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)
