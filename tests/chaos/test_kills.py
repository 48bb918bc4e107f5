"""A model process, then a whole worker, SIGKILLed while 16 clients keep sending requests."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.chaos.traffic import Load, back_to, broker_counters, mib, ready, replicas, rss
from tests.stack import Stack, alive, wait_until

pytestmark = pytest.mark.chaos

LOAD_SECONDS = 16.0


def worker_pids(stack: Stack) -> dict[str, int]:
    return {w["worker_id"]: w["pid"] for w in stack.cluster()}


def model_process(worker_pid: int, replica_id: str) -> psutil.Process:
    """The model process a worker runs for ``replica_id``: its command line names it."""
    return next(
        child for child in psutil.Process(worker_pid).children() if replica_id in child.cmdline()
    )


def test_killed_model_processes_and_workers_under_load(
    make_stack: Callable[..., Stack], tiny_model: Path, figures: Callable[[str], None]
) -> None:
    stack = make_stack(2)
    uid = stack.launch(model_name="tiny", model_path=str(tiny_model), replica=2)
    assert stack.broker is not None
    placed = {r["worker_id"] for r in replicas(stack, uid)}
    assert len(placed) == 2  # one replica on each worker
    rss_before = rss(stack.broker_loop_pid())

    with Load(stack, uid, clients=16) as load:
        wait_until(lambda: load.completed() >= 32, timeout=20)

        # A model process dies, as on a native abort in llama.cpp.
        victim = sorted(ready(stack, uid))[0]
        where = next(r["worker_id"] for r in replicas(stack, uid) if r["replica_id"] == victim)
        model_process(worker_pids(stack)[where], victim).kill()
        crash_back = back_to(stack, uid, 2, {victim}, since=time.monotonic())
        figures(f"model process {victim} SIGKILLed: 2 replicas ready again in {crash_back:.1f} s")

        served = load.completed()
        wait_until(lambda: load.completed() >= served + 32, timeout=20)

        # A whole worker dies; its model processes must die with it, and a new worker joins.
        doomed_id = replicas(stack, uid)[0]["worker_id"]
        doomed = next(w for w in stack.workers if w.pid == worker_pids(stack)[doomed_id])
        lost = {r["replica_id"] for r in replicas(stack, uid) if r["worker_id"] == doomed_id}
        orphans = [child.pid for child in psutil.Process(doomed.pid).children()]
        assert lost and orphans
        doomed.kill()
        killed = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            joined = pool.submit(stack.add_worker)
            worker_back = back_to(stack, uid, 2, lost, since=killed)
            joined.result(timeout=30)
        figures(
            f"worker {doomed_id} SIGKILLed ({len(lost)} replica lost, a new worker started): "
            f"2 replicas ready again in {worker_back:.1f} s"
        )
        wait_until(lambda: not alive(orphans), timeout=5)

        time.sleep(max(0.0, load.started + LOAD_SECONDS - time.monotonic()))
    tally = load.tally
    rss_after = rss(stack.broker_loop_pid())

    figures(f"16 clients for {time.monotonic() - load.started:.0f} s: {tally.summary()}")
    for failure, count in tally.failed.most_common():
        figures(f"  {count} x {failure}")
    for _, what in tally.broken[:10]:
        figures(f"  broken: {what}")
    figures(f"broker RSS before {mib(rss_before)}, after {mib(rss_after)}")
    figures(f"broker counters: {broker_counters(stack)}")

    assert tally.sent == tally.completed + tally.failures, tally.summary()
    assert tally.hung == 0 and not tally.broken, tally.summary()
    assert len(ready(stack, uid)) == 2
