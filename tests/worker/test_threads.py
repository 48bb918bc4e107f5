"""The thread tuner: measured steps decide, and a busy machine is noticed."""

from __future__ import annotations

import pytest

from xb.worker.threads import MAX_PROBE_SECONDS, PROBE_SECONDS, PROBE_STEPS, ThreadTuner

pytestmark = pytest.mark.unit


class Machine:
    """A fake clock, and step times that depend on the thread count and a busy flag."""

    def __init__(self) -> None:
        self.now = 0.0
        self.busy = False
        self.applied: list[int] = []

    def step_time(self, threads: int) -> float:
        if threads == 1:
            return 0.002
        return 0.020 if self.busy else 0.0014  # two threads: faster, until a core is taken

    def run(self, tuner: ThreadTuner, steps: int, tokens: int = 4) -> list[int]:
        used = []
        for _ in range(steps):
            tuner.before(tokens)
            used.append(tuner.threads)
            took = self.step_time(tuner.threads)
            self.now += took
            tuner.after(tokens, took)
        return used


def make(machine: Machine, ceiling: int = 2) -> ThreadTuner:
    return ThreadTuner(ceiling, machine.applied.append, clock=lambda: machine.now)


def test_one_thread_is_all_there_is_to_use() -> None:
    machine = Machine()
    tuner = make(machine, ceiling=1)
    assert set(machine.run(tuner, 50)) == {1}
    assert machine.applied == []


def test_the_faster_setting_wins_after_measuring_both() -> None:
    machine = Machine()
    tuner = make(machine)
    used = machine.run(tuner, 100)
    assert used[: 2 * PROBE_STEPS].count(1) == PROBE_STEPS  # each measured first
    assert used[-50:].count(2) >= 50 - PROBE_STEPS  # then two threads, probing one now and then


def test_a_busy_machine_moves_to_one_thread_and_back() -> None:
    machine = Machine()
    tuner = make(machine)
    machine.run(tuner, 100)
    machine.busy = True
    used = machine.run(tuner, 200)
    slow = [t for t in used if t == 2]
    # A few slow steps notice it, then re-probes now and then: never most of the time.
    assert len(slow) < 30
    assert used[-20:].count(1) >= 20 - PROBE_STEPS
    machine.busy = False
    machine.now += PROBE_SECONDS
    assert machine.run(tuner, 100)[-50:].count(2) >= 50 - PROBE_STEPS


def test_sizes_are_measured_apart() -> None:
    machine = Machine()
    tuner = make(machine)
    machine.run(tuner, 40, tokens=1)
    tuner.before(300)  # a prompt chunk: nothing known for this size yet, so it is probed
    assert tuner.threads in (1, 2) and tuner._probing is not None


def test_a_setting_that_keeps_losing_is_probed_less_and_less() -> None:
    machine = Machine()
    tuner = make(machine)
    machine.run(tuner, 100)
    machine.busy = True
    machine.run(tuner, 1000)  # two seconds: the backoff grows
    start = machine.now
    used = machine.run(tuner, 30_000)  # a minute more of a busy machine
    minutes = (machine.now - start) / 60
    slow = used.count(2)
    # One slow step per probe, a probe every MAX_PROBE_SECONDS at most once backed off.
    assert slow <= 60 / MAX_PROBE_SECONDS * minutes + 2, slow
