"""Many users at once: streams decoded together, follow-ups sent where their prefix is
cached, and the prefix cache counted in the metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.stack import Stack, long_chat, next_line, wait_until

pytestmark = pytest.mark.e2e


def test_streams_of_one_replica_are_decoded_together(
    make_stack: Callable[..., Stack], endless_model: Path
) -> None:
    stack = make_stack(1)
    stack.launch(model_name="e", model_path=str(endless_model), n_ctx=4096, n_parallel=4)
    # Four streams of 4,000 tokens each, seconds long, held open until the checks are done
    # (closing one cancels it): none can end before the others start.
    with contextlib.ExitStack() as streams:
        http = streams.enter_context(httpx.Client(base_url=stack.url, timeout=30))
        lines = []
        for _ in range(4):
            stream = streams.enter_context(
                http.stream("POST", "/v1/chat/completions", json=long_chat("e"))
            )
            lines.append(stream.iter_lines())  # kept: a collected iterator closes the stream
        # Each stream's first word is a token, not its place in line: none waited for
        # another, and all four are decoded at once, one on each of the replica's slots.
        for stream_lines in lines:
            assert next_line(stream_lines).startswith("data: {")
        (replica,) = (r for w in stack.cluster() for r in w["replicas"])
        assert replica["slots"] == 4 and replica["in_flight"] == 4


def chat(client: openai.OpenAI, history: list[dict[str, str]], tokens: int) -> Any:
    return client.chat.completions.create(
        model="tiny", messages=history, max_tokens=tokens, temperature=0.7
    )


def test_follow_ups_go_to_the_replica_that_holds_their_conversation(
    make_stack: Callable[..., Stack], tiny_model: Path
) -> None:
    stack = make_stack(2)
    uid = stack.launch(model_name="tiny", model_path=str(tiny_model), n_ctx=1024, replica=2)
    places = {r["worker_id"] for r in httpx.get(f"{stack.url}/v1/models/{uid}").json()["replicas"]}
    assert len(places) == 2
    client = stack.openai_client()
    for user in range(6):
        history = [{"role": "user", "content": f"user {user} asks about " + "the sea " * 40}]
        previous_prompt = 0
        for turn in range(3):
            reply = chat(client, history, 12)
            details = reply.usage.prompt_tokens_details
            if turn:
                # Everything but the template's rendering of the last answer was cached:
                # on the other replica only the shared first few tokens would be.
                assert details.cached_tokens >= previous_prompt, (user, turn, details)
            previous_prompt = reply.usage.prompt_tokens
            history += [
                {"role": "assistant", "content": reply.choices[0].message.content},
                {"role": "user", "content": f"and then, part {turn}?"},
            ]
    metrics = httpx.get(stack.url + "/metrics").text
    reused = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('xb_prompt_tokens_reused_total{model="tiny"}')
    )
    assert reused >= 6 * 2 * 100


def test_a_stream_its_client_stopped_leaves_its_conversation_cached(
    make_stack: Callable[..., Stack], endless_model: Path
) -> None:
    """A chat UI's Stop button: the client closes the stream after a few tokens, then sends
    a follow-up that quotes what it received. Two replicas: the follow-up must go to the
    one that holds the stopped conversation, and reuse it."""
    stack = make_stack(1)
    uid = stack.launch(model_name="e", model_path=str(endless_model), n_ctx=1024, replica=2)
    history = [{"role": "user", "content": "tell me about " + "the sea " * 40}]
    # No '<' in the answer: text that could begin the end-of-turn stop string is held back
    # until the next token, so a stream stopped there would quote part of a token.
    no_angle = {str(token_id): -100 for token_id in angle_tokens()}
    client = stack.openai_client()
    stream = client.chat.completions.create(
        model=uid,
        messages=history,
        max_tokens=600,
        temperature=0,
        logit_bias=no_angle,
        stream=True,
    )
    received = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received.append(chunk.choices[0].delta.content)
        if len(received) == 5:
            break
    stream.close()
    wait_until(lambda: stack.in_flight() == 0)  # the replica has seen the cancel
    follow = [
        *history,
        {"role": "assistant", "content": "".join(received)},
        {"role": "user", "content": "and then?"},
    ]
    reply = client.chat.completions.create(model=uid, messages=follow, max_tokens=4)
    first = client.chat.completions.create(model=uid, messages=history, max_tokens=1)
    assert reply.usage is not None and first.usage is not None
    details = reply.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    # The first prompt and every token received (each chunk holds one or more), but the
    # last one perhaps: it was sent before its cells were computed.
    assert details.cached_tokens >= first.usage.prompt_tokens + len(received) - 1
    assert details.cached_tokens < reply.usage.prompt_tokens


def angle_tokens() -> list[int]:
    """The generated models' tokens that hold a '<' (none of the rest is ever generated)."""
    from xb.core.demo_model import DemoModelConfig, vocabulary

    words, _, _ = vocabulary(DemoModelConfig().n_words)
    return [words.index(word) for word in ("<", "\u2581<")]
