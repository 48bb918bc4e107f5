"""A streamed request that waits for a slot hears its place in line: SSE comments for any
client, ``on_queued`` in the xb client, a line in ``xb chat``. Real processes, one slot."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.stack import KEEPALIVE, Stack, long_chat, next_line, wait_until
from xb.client import Client

pytestmark = pytest.mark.e2e
UID = "one-slot"


@pytest.fixture(scope="module")
def stack(module_stack: Stack, endless_model: Path) -> Stack:
    # One slot: one request runs, the others wait in line.
    module_stack.launch(
        model_name="endless",
        model_path=str(endless_model),
        model_uid=UID,
        n_ctx=4096,
        n_parallel=1,
    )
    return module_stack


def queued(stack: Stack) -> int:
    return int(httpx.get(f"{stack.url}/v1/models/{UID}", timeout=5).json()["queued"])


@contextlib.contextmanager
def holding(http: httpx.Client) -> Iterator[None]:
    """The slot taken by a long stream, until the block ends (closing it cancels it)."""
    with http.stream("POST", "/v1/chat/completions", json=long_chat(UID)) as stream:
        lines = stream.iter_lines()  # kept: a line iterator collected closes the stream
        assert next_line(lines).startswith("data: ")
        yield


def test_waiting_streams_get_their_place_as_comments_before_any_data(stack: Stack) -> None:
    with contextlib.ExitStack() as streams:
        http = streams.enter_context(httpx.Client(base_url=stack.url, timeout=30))
        holder = streams.enter_context(contextlib.ExitStack())
        holder.enter_context(holding(http))
        second = streams.enter_context(
            http.stream("POST", "/v1/chat/completions", json=long_chat(UID))
        )
        assert second.status_code == 200
        second_lines = second.iter_lines()
        assert next_line(second_lines) == ": queued, position 1"
        third = streams.enter_context(
            http.stream("POST", "/v1/chat/completions", json=long_chat(UID, 3))
        )
        third_lines = third.iter_lines()
        assert next_line(third_lines) == ": queued, position 2"

        holder.close()  # the second runs, and the third moves up (on the broker's tick)
        assert next_line(second_lines).startswith("data: ")
        assert next_line(third_lines) == ": queued, position 1"
        second.close()
        rest = [line for line in third_lines if line and line != KEEPALIVE]
    assert rest[0].startswith("data: {")
    assert not [line for line in rest if line.startswith(":")]  # none after the first token
    assert rest[-1] == "data: [DONE]"


def test_the_openai_package_reads_a_stream_that_waited(stack: Stack) -> None:
    client = stack.openai_client()

    def ask() -> str:
        stream = client.chat.completions.create(
            model=UID, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    with httpx.Client(base_url=stack.url, timeout=30) as http, ThreadPoolExecutor(1) as pool:
        with holding(http):
            answer = pool.submit(ask)
            wait_until(lambda: queued(stack) == 1)  # told its place: a comment is on its way
        assert answer.result(timeout=30)


def test_the_client_hears_the_places_and_xb_chat_shows_them(stack: Stack) -> None:
    places: list[int] = []

    def ask() -> str:
        with Client(stack.url) as client:
            chunks = client.get_model(UID).chat(
                [{"role": "user", "content": "hi"}],
                generate_config={"stream": True, "max_tokens": 4},
                on_queued=places.append,
            )
            return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)

    with httpx.Client(base_url=stack.url, timeout=30) as http, ThreadPoolExecutor(1) as pool:
        with holding(http):
            answer = pool.submit(ask)
            wait_until(lambda: places == [1])
        assert answer.result(timeout=30)
    assert places == [1]

    command = [sys.executable, "-m", "xb.client", "chat", UID, "-m", "hi", "--max-tokens", "4"]
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        with holding(http):
            chat = subprocess.Popen(
                [*command, "--endpoint", stack.url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=stack.env(),
            )
            try:
                wait_until(lambda: queued(stack) == 1)
            except BaseException:
                chat.kill()
                raise
        out, err = chat.communicate(timeout=60)
    assert chat.returncode == 0, err
    # Not a terminal here: the line stays, on stderr, apart from the answer on stdout.
    assert "waiting (1st in line)" in err
    assert out.strip() and "waiting" not in out


def test_a_whole_answer_hears_nothing_of_its_place(stack: Stack) -> None:
    body = {**long_chat(UID, 3, stream=False)}
    with httpx.Client(base_url=stack.url, timeout=30) as http, ThreadPoolExecutor(1) as pool:
        with holding(http):
            answer = pool.submit(http.post, "/v1/chat/completions", json=body)
            wait_until(lambda: queued(stack) == 1)
        reply = answer.result(timeout=30)
    assert reply.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] == 3
