"""One tenant floods a model with batch requests while another chats, and a worker is
SIGKILLed: the chatting tenant's requests all finish or end with a clear error, none
hangs, and its chats keep being served, ahead of the flood, through preemption."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.chaos.traffic import Load, Tally, back_to, broker_counters, metrics, replicas
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.chaos

LOAD_SECONDS = 16.0


def report(figures: Callable[[str], None], who: str, tally: Tally) -> None:
    figures(f"{who}: {tally.summary()}")
    for failure, count in tally.failed.most_common():
        figures(f"  {count} x {failure}")
    for _, what in tally.broken[:10]:
        figures(f"  broken: {what}")


def test_a_flood_and_a_chat_through_a_worker_kill(
    make_stack: Callable[..., Stack], tiny_model: Path, figures: Callable[[str], None]
) -> None:
    stack = make_stack(2)
    uid = stack.launch(model_name="tiny", model_path=str(tiny_model), replica=2, n_parallel=2)
    flood_body = {"user": "flood", "priority": "batch"}
    flood = Load(stack, uid, clients=12, max_tokens=(64, 160), extra=flood_body)
    chat = Load(stack, uid, clients=2, max_tokens=(4, 24), extra={"user": "chat"})
    with flood, chat:
        wait_until(lambda: chat.completed() >= 8 and flood.completed() >= 8, timeout=30)

        doomed_id = replicas(stack, uid)[0]["worker_id"]
        pid = next(w["pid"] for w in stack.cluster() if w["worker_id"] == doomed_id)
        doomed = next(w for w in stack.workers if w.pid == pid)
        lost = {r["replica_id"] for r in replicas(stack, uid) if r["worker_id"] == doomed_id}
        doomed.kill()
        killed = time.monotonic()
        chatted = chat.completed()
        with ThreadPoolExecutor(1) as pool:
            joined = pool.submit(stack.add_worker)
            back = back_to(stack, uid, 2, lost, since=killed)
            joined.result(timeout=30)
        figures(f"worker {doomed_id} SIGKILLed under the flood: 2 replicas back in {back:.1f} s")
        # The chat goes on after the kill, the flood still running beside it.
        wait_until(lambda: chat.completed() >= chatted + 8, timeout=30)
        time.sleep(max(0.0, chat.started + LOAD_SECONDS - time.monotonic()))
        chat_tally, flood_tally = chat.stop(), flood.stop()

    report(figures, "chat (2 clients)", chat_tally)
    report(figures, "flood (12 clients, batch)", flood_tally)
    figures(f"broker counters: {broker_counters(stack)}")
    for tally in (chat_tally, flood_tally):
        assert tally.sent == tally.completed + tally.failures, tally.summary()
        assert tally.hung == 0 and not tally.broken, tally.summary()
    assert metrics(stack)["xb_broker_preemptions_total"] > 0
