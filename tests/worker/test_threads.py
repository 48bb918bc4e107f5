"""The thread tuner: steps timed side by side decide, and a busy machine is noticed."""

from __future__ import annotations

import itertools

import pytest

from xb.worker.threads import MAX_PROBE_SECONDS, PROBE_STEPS, PROMPT_TOKENS, ThreadTuner

pytestmark = pytest.mark.unit


class Machine:
    """A fake clock, and step times that depend on the thread count, a busy flag, and a
    context that grows with every step (attention reads more each time)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.busy = False
        self.steps = 0
        self.applied: list[int] = []
        self.tried: list[bool] = []  # whether each step tried the other setting

    def step_time(self, threads: int) -> float:
        growth = 1 + self.steps / 2000
        if threads == 1:
            return 0.002 * growth
        return (0.020 if self.busy else 0.0014) * growth

    def run(self, tuner: ThreadTuner, steps: int, tokens: int = 4) -> list[int]:
        used = []
        for _ in range(steps):
            tuner.before(tokens)
            used.append(tuner.threads)
            self.tried.append(tuner.trying)
            took = self.step_time(tuner.threads)
            self.now += took
            self.steps += 1
            tuner.after(tokens, took)
        return used


def make(machine: Machine, ceiling: int = 2) -> ThreadTuner:
    return ThreadTuner(ceiling, machine.applied.append, clock=lambda: machine.now)


def switches(used: list[int]) -> int:
    return sum(a != b for a, b in itertools.pairwise(used))


def test_one_thread_is_all_there_is_to_use() -> None:
    machine = Machine()
    tuner = make(machine, ceiling=1)
    assert set(machine.run(tuner, 50)) == {1}
    assert machine.applied == []


def test_the_faster_setting_is_kept_while_the_context_grows() -> None:
    machine = Machine()
    tuner = make(machine)
    used = machine.run(tuner, 3000)
    # Two threads nearly always; one only for short probes, about once a second.
    assert used.count(1) < 0.02 * len(used)
    seconds = machine.now
    assert switches(used) <= 2 * (seconds + 1) * 2


def test_a_busy_machine_moves_to_one_thread_and_back() -> None:
    machine = Machine()
    tuner = make(machine)
    machine.run(tuner, 500)
    machine.busy = True
    used = machine.run(tuner, 3000)
    assert used[:10].count(1) >= 5  # noticed within a few steps
    assert used[-1000:].count(2) < 10  # and seldom tried again, as probing backs off
    machine.busy = False
    later = machine.run(tuner, 20_000)
    assert later[-1000:].count(2) > 950  # back to two threads once probed again


def test_a_step_that_tries_the_other_setting_says_so() -> None:
    machine = Machine()
    tuner = make(machine)
    steady = machine.run(tuner, 3000)
    # Steps on one thread were the tries; two threads won them all.
    assert machine.tried == [threads == 1 for threads in steady]
    assert any(machine.tried)
    machine.busy, machine.tried = True, []
    busy = machine.run(tuner, 3000)
    # Once one thread wins, two are what the tries use.
    assert sum(machine.tried) > 0
    assert all(busy[i] == 2 for i in range(100, len(busy)) if machine.tried[i])


def test_a_setting_that_keeps_losing_is_probed_less_and_less() -> None:
    machine = Machine()
    tuner = make(machine)
    machine.run(tuner, 100)
    machine.busy = True
    machine.run(tuner, 2000)
    start = machine.now
    used = machine.run(tuner, 30_000)
    minutes = (machine.now - start) / 60
    # One slow step per probe (it ends at once), a probe every MAX_PROBE_SECONDS.
    assert used.count(2) <= 60 / MAX_PROBE_SECONDS * minutes + 2, used.count(2)


def test_sizes_are_tuned_apart() -> None:
    machine = Machine()
    tuner = make(machine)
    machine.run(tuner, 40, tokens=1)
    assert len(tuner._sizes) == 1
    machine.run(tuner, PROBE_STEPS, tokens=8)
    assert len(tuner._sizes) == 2


def test_prompt_chunks_follow_the_generating_steps_and_never_probe() -> None:
    machine = Machine()
    tuner = make(machine)
    machine.run(tuner, 200)
    # However often they come, prompt chunks use what generation found best: every
    # thread on a free machine ...
    for _ in range(50):
        machine.now += 5.0  # far apart, as follow-ups are
        assert set(machine.run(tuner, 1, tokens=PROMPT_TOKENS * 2)) == {2}
    assert len(tuner._sizes) == 1
    # ... and one thread once generation found a core taken.
    machine.busy = True
    machine.run(tuner, 500)
    assert set(machine.run(tuner, 5, tokens=500)) == {1}


def test_a_new_share_applies_at_once_and_each_share_keeps_what_it_learnt() -> None:
    machine = Machine()
    tuner = make(machine)
    machine.busy = True  # a core is taken: under a share of two, one thread wins
    machine.run(tuner, 500)
    assert machine.run(tuner, 20).count(1) >= 19
    tuner.share(1)  # another replica started working: one thread each
    assert machine.applied[-1] == 1
    assert set(machine.run(tuner, 50)) == {1}
    # It stopped at once: back to a share of two, where one thread was learnt to win.
    tuner.share(2)
    assert machine.run(tuner, 20).count(1) >= 19
    applied = len(machine.applied)
    tuner.share(2)  # no change: nothing applied
    assert len(machine.applied) == applied


def test_a_share_given_up_long_ago_is_confirmed_soon() -> None:
    machine = Machine()
    tuner = make(machine)
    machine.busy = True
    machine.run(tuner, 500)
    tuner.share(1)
    machine.run(tuner, 5000)  # ten seconds on one thread; the core came back meanwhile
    machine.busy = False
    tuner.share(2)
    assert machine.run(tuner, 200)[-100:].count(2) > 95  # probed at once, not in 16 s


def test_prompt_chunks_keep_every_thread_when_one_wins_small_steps_by_a_little() -> None:
    machine = Machine()
    # One thread a little faster on steps of a token (the threads' meeting costs a share
    # of so short a step): generation moves to one thread, prompt chunks stay on two.
    machine.step_time = lambda threads: 0.0020 if threads == 1 else 0.0024  # type: ignore[method-assign]
    tuner = make(machine)
    used = machine.run(tuner, 2000)
    assert used[-500:].count(1) > 450
    machine.now += 5.0
    assert set(machine.run(tuner, 3, tokens=PROMPT_TOKENS * 2)) == {2}
