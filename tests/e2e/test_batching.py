"""Many users at once: streams decoded together, follow-ups sent where their prefix is
cached, and the prefix cache counted in the metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.stack import Stack, wait_until

pytestmark = pytest.mark.e2e


def test_streams_of_one_replica_are_decoded_together(
    make_stack: Callable[..., Stack], endless_model: Path
) -> None:
    stack = make_stack(1)
    stack.launch(model_name="e", model_path=str(endless_model), n_ctx=1024, n_parallel=4)
    client = stack.openai_client()
    started = time.monotonic()

    def run(i: int) -> tuple[float, float]:
        stream = client.chat.completions.create(
            model="e",
            messages=[{"role": "user", "content": f"story {i}"}],
            max_tokens=300,
            stream=True,
        )
        first = 0.0
        for chunk in stream:
            if not first and chunk.choices and chunk.choices[0].delta.content:
                first = time.monotonic() - started
        return first, time.monotonic() - started

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(run, i) for i in range(4)]
        replica = wait_until(
            lambda: next(
                (r for w in stack.cluster() for r in w["replicas"] if r["in_flight"] == 4), None
            ),
            timeout=10,
        )
        times = [f.result(timeout=60) for f in running]
    assert replica["slots"] == 4
    # Every stream had its first token before any stream ended: none waited for another.
    assert max(first for first, _ in times) < min(end for _, end in times)


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
