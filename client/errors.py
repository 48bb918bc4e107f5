"""What the clients raise, shaped like the ``openai`` package's errors, so callers catch
what they mean instead of reading messages::

    ClientError                 xb.core.errors.XbError: anything the clients raise
    ├── APIConnectionError      the endpoint could not be reached, or dropped the connection
    │   └── APITimeoutError     it did not answer in time
    ├── APIStreamError          a stream that had started ended with an error object
    └── APIStatusError          the API answered with an error status (``status_code``,
        │                       ``code``, ``message``, ``type``, ``param`` from its body)
        ├── BadRequestError         400, 422
        ├── AuthenticationError     401
        ├── PermissionDeniedError   403
        ├── NotFoundError           404
        ├── RateLimitError          429
        └── InternalServerError     5xx

A status without a class of its own (499, say) raises ``APIStatusError`` itself.
"""

from __future__ import annotations

from typing import Any

import httpx

from xb.core.errors import XbError


class ClientError(XbError):
    """The API answered with an error, or could not be reached; the message says which."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class APIConnectionError(ClientError):
    """The endpoint could not be reached, or the connection broke mid-answer."""

    def __init__(self, base_url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach xb at {base_url} ({cause}); is xb-broker running?")
        self.base_url = base_url


class APITimeoutError(APIConnectionError):
    """The endpoint did not answer within the client's ``timeout``."""


class APIStreamError(ClientError):
    """A stream ended with an OpenAI error object after its first chunk."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message") or "the stream failed"))
        self.code: str | None = error.get("code")
        self.type: str | None = error.get("type")
        self.param: str | None = error.get("param")


class APIStatusError(ClientError):
    """The API answered with an error status; its OpenAI error object is read into fields."""

    def __init__(self, response: httpx.Response) -> None:
        error, text = _read(response)
        self.status_code = response.status_code
        self.response = response
        self.code: str | None = error.get("code")
        self.type: str | None = error.get("type")
        self.param: str | None = error.get("param")
        super().__init__(text, self.status_code)
        self.message = str(error.get("message") or text)  # the body's, without the status


class BadRequestError(APIStatusError):
    """400 or 422: the request itself is wrong; ``param`` names the field when known."""


class AuthenticationError(APIStatusError):
    """401: no API key, or one the endpoint does not know."""


class PermissionDeniedError(APIStatusError):
    """403: the key is valid but its scope does not allow this call."""


class NotFoundError(APIStatusError):
    """404: no such model, registration or route."""


class RateLimitError(APIStatusError):
    """429: the model's queue is full; retry after a moment."""


class InternalServerError(APIStatusError):
    """5xx: the server failed or has no replica to answer with."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    422: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}


def status_error(response: httpx.Response) -> APIStatusError:
    """The error for an answer with an error status (the body must have been read)."""
    status = response.status_code
    kind = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    return kind(response)


def connection_error(base_url: str, exc: httpx.TransportError) -> APIConnectionError:
    """The error for a request that got no (complete) answer."""
    kind = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    return kind(base_url, exc)


def _read(response: httpx.Response) -> tuple[dict[str, Any], str]:
    """The body's OpenAI error object (empty without one) and the message to raise."""
    status = response.status_code
    try:
        error = response.json().get("error", {})
        fields = error if isinstance(error, dict) else {}
        return fields, f"{fields.get('message', response.text)} (HTTP {status})"
    except (ValueError, AttributeError):
        return {}, f"HTTP {status}: {response.text[:200]}"
