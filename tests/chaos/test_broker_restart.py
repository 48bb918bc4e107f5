"""The broker SIGKILLed under load and started again on the same home: what users launched
comes back, with its replica count and its request_limits."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.chaos.traffic import Load, back_to, broker_counters, ready, replicas
from tests.stack import Stack, long_chat, wait_until

pytestmark = pytest.mark.chaos


def test_broker_killed_under_load_comes_back_with_what_was_launched(
    make_stack: Callable[..., Stack], endless_model: Path, figures: Callable[[str], None]
) -> None:
    stack = make_stack(2)
    uid = stack.launch(
        model_name="endless",
        model_path=str(endless_model),
        n_ctx=4096,
        replica=2,
        request_limits=2,
    )
    before = ready(stack, uid)
    assert len(before) == 2
    assert stack.broker is not None

    # Two clients, within the request_limits, keep sending while the broker dies and starts.
    with Load(stack, uid, clients=2, max_tokens=(2, 6)) as load:
        wait_until(lambda: load.completed() >= 4, timeout=20)
        # Both of xb-broker's processes, the broker's loop first; workers keep their models.
        os.kill(stack.broker_loop_pid(), signal.SIGKILL)
        stack.broker.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        stack.broker.wait(10)
        stack.start()  # the same XB_HOME, so the same keys and broker.db
        up = time.monotonic()
        back = back_to(stack, uid, 2, set(), since=up)
        served = load.completed()
        wait_until(lambda: load.completed() >= served + 4, timeout=20)
    tally = load.tally

    figures(
        f"broker SIGKILLed; API answering {up - killed:.1f} s later; "
        f"2 replicas ready {back:.1f} s after that"
    )
    figures(f"2 clients through the restart: {tally.summary()}")
    for failure, count in tally.failed.most_common():
        figures(f"  {count} x {failure}")
    cut = Counter(what.split(":")[0] for when, what in tally.broken if killed <= when <= up)
    figures(
        f"  {sum(cut.values())} without a response while the broker was down (its API is in "
        f"the same process): {dict(cut)}"
    )
    for _, what in [b for b in tally.broken if not killed <= b[0] <= up][:10]:
        figures(f"  broken: {what}")

    assert tally.hung == 0, tally.summary()
    # Only requests the dead process held, or sent while no API listened, may end without
    # a response: every other one is answered.
    assert all(killed <= when <= up for when, _ in tally.broken), tally.broken
    assert tally.sent == tally.completed + tally.failures + len(tally.broken)
    model = httpx.get(f"{stack.url}/v1/models/{uid}", timeout=5).json()
    assert model["replica"] == 2 and len(replicas(stack, uid)) == 2
    # The workers kept their model processes: the same replicas are back, not new ones.
    assert ready(stack, uid) == before

    # request_limits (2) still holds: two long streams in flight, and a third is refused.
    # The streams are read all along: one left unread is cancelled as a slow reader.
    started = [threading.Event(), threading.Event()]
    done = threading.Event()

    def hold(flag: threading.Event) -> None:
        with httpx.stream(
            "POST", f"{stack.url}/v1/chat/completions", json=long_chat(uid), timeout=30
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    flag.set()
                if done.is_set():
                    return

    with ThreadPoolExecutor(2) as pool:
        holders = [pool.submit(hold, flag) for flag in started]
        try:
            assert all(flag.wait(30) for flag in started)
            refused = httpx.post(
                f"{stack.url}/v1/chat/completions", json=long_chat(uid, 5, stream=False), timeout=30
            )
            assert not any(h.done() for h in holders)  # both streams ran all along
        finally:
            done.set()
    for holder in holders:
        holder.result()
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "queue_full"
    assert "request_limits of 2" in refused.json()["error"]["message"]
    figures(f"request_limits after the restart: a third request is {refused.status_code}")
    wait_until(lambda: stack.in_flight() == 0, timeout=10)
    chat = long_chat(uid, 5, stream=False)
    reply = httpx.post(f"{stack.url}/v1/chat/completions", json=chat, timeout=30)
    assert reply.status_code == 200, reply.text
    figures(f"broker counters: {broker_counters(stack)}")
