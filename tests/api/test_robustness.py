"""Input the protocol cannot carry, bodies and answers over the limits, whole answers past
their deadline, and streams nobody reads: each ends with a clear error, frees the
model's slot, and leaves the connection and the facade as they were."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.stack import Stack, long_chat, wait_until
from xb.api.bridge import MAX_PENDING_FRAMES, BrokerBridge
from xb.core import protocol as p
from xb.core.demo_model import DemoModelConfig, write_demo_model

pytestmark = pytest.mark.e2e
CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}
GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def wide_model(models_dir: Path) -> Path:
    """1024 numbers an embedding: a thousand of them take more than one protocol frame."""
    config = DemoModelConfig(n_embd=1024, n_layer=1, n_head=4, n_ff=256)
    return write_demo_model(models_dir / "wide.gguf", config)


@pytest.fixture(scope="module")
def stack(module_stack: Stack, tiny_model: Path, wide_model: Path) -> Stack:
    module_stack.launch(model_name="tiny", model_path=str(tiny_model), n_ctx=256)
    module_stack.launch(
        model_name="wide", model_path=str(wide_model), model_type="embedding", n_ctx=64
    )
    return module_stack


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return dict(error)


def chat_with(**fields: Any) -> bytes:
    return json.dumps({**GOOD, **fields}).encode()


def assistant_call(arguments: str) -> bytes:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]
    return chat_with(messages=messages)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, chat_with(max_tokens=10**30), "max_tokens"),
        (CHAT, chat_with(seed=2**70), "seed"),
        (CHAT, chat_with(seed=-(2**63) - 1), "seed"),
        # The escape as a client writes it: json.dumps keeps the lone surrogate escaped.
        (CHAT, chat_with(messages=[{"role": "user", "content": "\ud800"}]), "messages.0.content"),
        (CHAT, rb'{"model": "tiny", "messages": [{"role": "user", "content": "a\udfffb"}]}', None),
        (CHAT, assistant_call("not json {"), "messages.1.tool_calls.0.function.arguments"),
        (CHAT, assistant_call("NaN"), "messages.1.tool_calls.0.function.arguments"),
        (CHAT, chat_with(logit_bias={"99999999999999999999999": 1}), "logit_bias"),
        (CHAT, chat_with(logit_bias={"²": 1}), "logit_bias"),
        (CHAT, chat_with(temperature=float("nan")), "temperature"),
        (CHAT, b'{"model": "tiny", "messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", None),
        (CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff"}]}', None),
        ("/v1/completions", json.dumps({"model": "tiny", "prompt": "\udc00"}).encode(), "prompt"),
        ("/v1/completions", json.dumps({"model": "tiny", "prompt": ["x"] * 9, "n": 16}), "prompt"),
        ("/v1/embeddings", json.dumps({"model": "tiny", "input": ["x", "\ud800"]}), "input.1"),
        ("/v1/models", json.dumps({"model_name": "x", "n_ctx": 2**64}), "n_ctx"),
    ],
    ids=lambda value: value if isinstance(value, str) and not value.startswith("/") else None,
)
def test_what_the_protocol_cannot_carry_is_400_naming_the_field(
    stack: Stack, path: str, body: bytes | str, param: str | None
) -> None:
    response = httpx.post(stack.url + path, content=body, headers=JSON, timeout=30)
    error = error_of(response, 400)
    if param is not None:
        assert error["param"] == param, error
        assert param.split(".")[-1] in error["message"]


def local_port(response: httpx.Response) -> int:
    """The client's port of the connection that carried ``response``."""
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def test_an_error_leaves_the_connection_open(stack: Stack) -> None:
    nine_mb = chat_with(messages=[{"role": "user", "content": "x" * 9_000_000}])
    bad: list[tuple[str, str, bytes | None, int]] = [
        ("POST", CHAT, chat_with(messages=[{"role": "user", "content": "\ud800"}]), 400),
        ("POST", CHAT, assistant_call("{oops"), 400),
        ("POST", CHAT, b"{not json", 400),
        ("POST", CHAT, chat_with(model="ghost"), 404),
        ("GET", "/v1/nothing", None, 404),
        ("GET", CHAT, None, 405),
        ("POST", CHAT, nine_mb, 413),
    ]
    with httpx.Client(base_url=stack.url, headers=JSON, timeout=60) as http:
        port = local_port(http.get("/health"))
        for method, path, body, status in bad:
            refused = http.request(method, path, content=body)
            error_of(refused, status)
            assert "close" not in refused.headers.get("connection", "")
            good = http.post(CHAT, content=chat_with())
            assert good.status_code == 200, good.text
            assert local_port(refused) == local_port(good) == port, (method, path)


def test_a_chunked_body_is_bounded_as_a_sized_one(stack: Stack) -> None:
    def chunks(body: bytes, size: int = 1 << 20) -> Iterator[bytes]:
        for start in range(0, len(body), size):
            yield body[start : start + size]

    # httpx sends a generator without a Content-Length, chunked.
    small = httpx.post(stack.url + CHAT, content=chunks(chat_with()), headers=JSON, timeout=30)
    assert small.request.headers["transfer-encoding"] == "chunked"
    assert small.status_code == 200, small.text
    huge = b'{"model": "tiny", "prompt": "' + b"x" * (17 << 20) + b'"}'
    response = httpx.post(
        stack.url + "/v1/completions", content=chunks(huge), headers=JSON, timeout=60
    )
    assert error_of(response, 413)["code"] == "request_too_large"


def test_a_request_over_the_frame_limit_is_413_before_it_is_sent(stack: Stack) -> None:
    text = "x" * 9_000_000  # under the 16 MiB body limit, over the 8 MiB frame limit
    for path, body in [
        (CHAT, {"model": "tiny", "messages": [{"role": "user", "content": text}], "stream": True}),
        ("/v1/completions", {"model": "tiny", "prompt": text}),
        ("/v1/embeddings", {"model": "wide", "input": [text[:1000]] * 9000}),
    ]:
        response = httpx.post(stack.url + path, json=body, timeout=60)
        error = error_of(response, 413)
        assert error["code"] == "request_too_large" and "8388608" in error["message"]
        assert stack.in_flight() == 0
    assert httpx.post(stack.url + CHAT, json=GOOD, timeout=30).status_code == 200


def test_an_answer_over_the_frame_limit_is_an_error_not_a_hang(stack: Stack) -> None:
    many = {"model": "wide", "input": ["x"] * 1000}  # ~9 MB of numbers back
    response = httpx.post(stack.url + "/v1/embeddings", json=many, timeout=60)
    assert "fewer inputs" in error_of(response, 400)["message"]
    wait_until(lambda: stack.in_flight() == 0, timeout=10)
    few = httpx.post(stack.url + "/v1/embeddings", json={**many, "input": ["x"] * 3}, timeout=30)
    assert few.status_code == 200 and len(few.json()["data"]) == 3


# ---- deadlines: a broker whose answers may take 1 s, and whose streams' writes 1 s ----


@pytest.fixture(scope="module")
def slow(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, endless_model: Path
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("xbhome")
    stack = Stack(
        home=home,
        broker_args=["--answer-timeout", "1", "--write-timeout", "1"],
        model_dirs=[models_dir],
        broker_log=home / "broker.log",
    )
    with stack.running():
        stack.launch(model_name="endless", model_path=str(endless_model), n_ctx=4096)
        yield stack


def test_a_whole_answer_past_its_deadline_is_504_and_cancelled(slow: Stack) -> None:
    with httpx.Client(base_url=slow.url, timeout=60) as http:
        started = time.monotonic()
        body = long_chat("endless", stream=False) | {"n": 2}
        late = http.post(CHAT, json=body)
        error = error_of(late, 504)
        assert error["code"] == "timeout" and "--answer-timeout" in error["message"]
        assert time.monotonic() - started < 30
        wait_until(lambda: slow.in_flight() == 0, timeout=20)  # both choices cancelled
        # The same connection carries a stream next (streams have no deadline).
        with http.stream("POST", CHAT, json=long_chat("endless", max_tokens=3)) as stream:
            lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
            assert local_port(stream) == local_port(late)
        assert lines[-1] == "data: [DONE]" and len(lines) >= 3
    metrics = httpx.get(slow.url + "/metrics").text
    assert 'xb_requests_total{endpoint="chat",model="endless",status="504"} 1.0' in metrics


STALLING = long_chat("endless", max_tokens=4000) | {"logprobs": True, "top_logprobs": 20, "n": 4}


def stalled_stream(stack: Stack) -> socket.socket:
    """A stream whose client never reads, of large chunks (four choices with logprobs, in
    every slot of the replica) so that the connection's buffers fill soon."""
    payload = json.dumps(STALLING).encode()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", stack.api_port))
    sock.sendall(head.encode() + payload)
    return sock


def test_a_stream_whose_client_stops_reading_is_cancelled(slow: Stack) -> None:
    assert slow.broker is not None and slow.broker_log is not None
    facade = psutil.Process(slow.broker.pid)
    # The same kind of stream, read to its end: what the facade allocates once is in place.
    with httpx.stream("POST", slow.url + CHAT, json=STALLING | {"max_tokens": 20}) as read:
        assert [line for line in read.iter_lines() if line][-1] == "data: [DONE]"
    before = facade.memory_info().rss
    stalled = stalled_stream(slow)
    try:
        wait_until(lambda: slow.in_flight() == 4, timeout=20)
        wait_until(lambda: slow.in_flight() == 0, timeout=90)
        # The facade logs a stalled stream just before it cancels it: had the answers
        # ended by themselves, their slots would have been free before this line.
        log = slow.broker_log.read_text()
        assert log.count("a stream's client read nothing for 1 s") == 1, log[-2000:]
        assert "the stream was cancelled (model 'endless', tenant '')" in log  # who, no key
        grown = facade.memory_info().rss - before
        assert grown < 6 << 20, f"the facade grew by {grown / 2**20:.1f} MiB"
    finally:
        stalled.close()
    with httpx.stream("POST", slow.url + CHAT, json=long_chat("endless", 3), timeout=30) as ok:
        assert [line for line in ok.iter_lines() if line][-1] == "data: [DONE]"


@pytest.mark.unit
def test_a_request_that_falls_too_far_behind_is_cancelled() -> None:
    """The facade holds at most MAX_PENDING_FRAMES frames of a request whose reader has
    stopped; then the request is cancelled and its reader told so."""

    async def flood() -> tuple[int, p.Message, bool]:
        bridge = BrokerBridge("tcp://127.0.0.1:9")  # never connected: sends are dropped
        queue: asyncio.Queue[p.Message] = asyncio.Queue(MAX_PENDING_FRAMES + 1)
        bridge._waiters["r"] = queue
        for index in range(MAX_PENDING_FRAMES + 100):
            bridge._deliver(queue, p.Partial("r", "token", 1, index=index))
        size, waiting = queue.qsize(), "r" in bridge._waiters
        last = [queue.get_nowait() for _ in range(size)][-1]
        await bridge.close()
        return size, last, waiting

    size, last, waiting = asyncio.run(flood())
    assert size == MAX_PENDING_FRAMES + 1 and not waiting
    assert isinstance(last, p.Error) and last.code == p.ErrorCode.CANCELLED
