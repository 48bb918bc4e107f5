"""Preemption through the whole stack: a batch answer streaming on a replica's only slot
gives the slot to an interactive chat, pauses, and resumes; its text is the text it has
when it runs alone (greedy), and ``/metrics`` counts the preemption."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.traffic import metrics
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.e2e

BATCH_TOKENS = 1000  # long enough that the chat comes while it runs, even under load


def batch_body(stream: bool) -> dict[str, Any]:
    return {
        "model": "e",
        "prompt": "once upon a time",
        "max_tokens": BATCH_TOKENS,
        "temperature": 0,
        "stream": stream,
        "extra_body": {"priority": "batch"},
    }


def test_a_batch_answer_preempted_by_a_chat_resumes_with_the_same_text(
    make_stack: Callable[..., Stack], endless_model: Path
) -> None:
    stack = make_stack(1)
    # Cells reused from the prefix cache, the thread count the engine tunes, and drafts
    # (a token decoded alone or in a step of several) change the logits' last digits (a
    # greedy answer of this random model drifts after ~150 tokens when either differs);
    # preemption does not: parked cells come back bit for bit.
    stack.launch(
        model_name="e",
        model_path=str(endless_model),
        n_ctx=4096,
        n_parallel=1,
        prefix_cache_tokens=0,
        n_threads=1,  # two threads fixed would spin at llama.cpp's barriers under load
        speculative="off",
    )
    client = stack.openai_client()
    alone = client.completions.create(**batch_body(stream=False))
    assert alone.usage is not None and alone.usage.completion_tokens == BATCH_TOKENS

    arrived: list[tuple[float, str]] = []  # when each chunk of the batch answer came

    def stream_batch() -> None:
        for chunk in client.completions.create(**batch_body(stream=True)):
            if chunk.choices and chunk.choices[0].text:
                arrived.append((time.monotonic(), chunk.choices[0].text))

    batch = threading.Thread(target=stream_batch)
    batch.start()
    wait_until(lambda: len(arrived) >= 5)  # it holds the slot and streams
    asked = time.monotonic()
    chat = client.chat.completions.create(
        model="e", messages=[{"role": "user", "content": "hi"}], max_tokens=16, temperature=0
    )
    answered = time.monotonic()
    batch.join(timeout=120)
    assert not batch.is_alive()

    assert chat.usage is not None and chat.usage.completion_tokens == 16
    # The chat did not wait for the batch answer on the one slot: it took the slot, and
    # the batch answer resumed after it, its text the one it has alone.
    assert arrived[0][0] < asked < answered < arrived[-1][0]
    wait_until(lambda: metrics(stack).get("xb_broker_preemptions_total", 0) == 1, timeout=5)
    assert "".join(text for _, text in arrived) == alone.choices[0].text
    models = httpx.get(stack.url + "/v1/models", headers=stack.headers(), timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["e"]
