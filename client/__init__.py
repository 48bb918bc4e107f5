"""The Python clients and the ``xb`` command line, all speaking the REST API."""

from xb.client.aio import AsyncClient, AsyncModelHandle
from xb.client.client import Client, ModelHandle
from xb.client.errors import (
    APIConnectionError,
    APIStatusError,
    APIStreamError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APIStreamError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncModelHandle",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ClientError",
    "InternalServerError",
    "ModelHandle",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
]
