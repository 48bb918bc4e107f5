"""The clients' errors: one class per kind of refusal, as the ``openai`` package has them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack import Stack
from xb.client import (
    APIConnectionError,
    APIStatusError,
    APIStreamError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ClientError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    calls,
)
from xb.client.errors import connection_error, status_error
from xb.core.protocol import ErrorCode

HI = [{"role": "user", "content": "Hello"}]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def client(module_stack: Stack) -> Iterator[Client]:
    with Client(module_stack.url) as c:
        yield c


@pytest.mark.unit
@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequestError),
        (422, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, InternalServerError),
        (503, InternalServerError),
        (499, APIStatusError),
    ],
)
def test_each_status_has_its_class(status: int, kind: type[APIStatusError]) -> None:
    body = {"error": {"message": "no", "type": "t", "param": "p", "code": "c"}}
    error = status_error(httpx.Response(status, json=body))
    assert type(error) is kind and isinstance(error, ClientError)
    assert (error.status_code, error.status, error.code, error.param) == (status, status, "c", "p")
    assert str(error) == f"no (HTTP {status})" and error.message == "no" and error.type == "t"


@pytest.mark.unit
def test_a_body_without_an_error_object_still_reads() -> None:
    error = status_error(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(error, InternalServerError) and error.code is None
    assert str(error) == "HTTP 502: <html>bad gateway</html>"


@pytest.mark.unit
def test_a_timeout_is_a_connection_error_of_its_own() -> None:
    timeout = connection_error("http://x", httpx.ReadTimeout("slow"))
    refused = connection_error("http://x", httpx.ConnectError("refused"))
    assert type(timeout) is APITimeoutError and isinstance(timeout, APIConnectionError)
    assert type(refused) is APIConnectionError and "cannot reach xb at http://x" in str(refused)


@pytest.mark.unit
def test_an_error_in_a_stream_keeps_its_code() -> None:
    with pytest.raises(APIStreamError, match="worker lost") as info:
        calls.chunk('data: {"error": {"message": "worker lost", "code": "worker_lost"}}')
    assert info.value.code == "worker_lost"


@pytest.mark.unit
def test_a_closed_port_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with Client(url) as blocking, pytest.raises(APIConnectionError, match="cannot reach"):
        blocking.list_models()

    async def run() -> None:
        async with AsyncClient(url) as client:
            await client.list_models()

    with pytest.raises(APIConnectionError, match="cannot reach"):
        asyncio.run(run())


@pytest.mark.e2e
def test_the_facade_refusals_raise_their_classes(
    client: Client, module_stack: Stack, tiny_model: Path
) -> None:
    with pytest.raises(NotFoundError) as missing:
        client.describe_model("nobody")
    assert missing.value.status_code == 404 and missing.value.code == ErrorCode.UNKNOWN_MODEL.value
    with pytest.raises(BadRequestError) as bad:
        client.launch_model("tiny", model_path=str(tiny_model), replica_config=[{"devices": []}])
    assert bad.value.status_code == 400 and bad.value.param == "replica_config"
    with pytest.raises(BadRequestError) as invalid:
        client.launch_model("tiny", model_path=str(tiny_model), n_ctx="many")
    assert invalid.value.param == "n_ctx"

    async def run() -> None:
        async with AsyncClient(module_stack.url) as aio:
            await aio.describe_model("nobody")

    with pytest.raises(NotFoundError):
        asyncio.run(run())


@pytest.mark.e2e
def test_a_full_queue_raises_rate_limit_error(client: Client, endless_model: Path) -> None:
    uid = client.launch_model(
        "e", model_path=str(endless_model), model_uid="busy", n_ctx=4096, request_limits=1
    )
    model = client.get_model(uid)
    busy: Any = model.chat(HI, generate_config={"max_tokens": 4000, "stream": True})
    with contextlib.closing(busy):
        next(busy)
        with pytest.raises(RateLimitError) as full:
            model.chat(HI, generate_config={"max_tokens": 3})
    assert full.value.status_code == 429 and full.value.code == ErrorCode.QUEUE_FULL.value
    client.terminate_model(uid)
