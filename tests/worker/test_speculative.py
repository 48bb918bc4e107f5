"""Speculative decoding: n-gram drafts checked in the batch, on the real llama.cpp engine
with a generated model (greedy answers of its random weights fall into loops, which the
n-gram drafts then guess), and the plan that decides when drafts pay."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest

from tests.worker.test_backend import N_CTX, greedy, run, tokens
from xb.core.protocol import ChatMessage, GenerateParams, ModelSpec
from xb.worker import llama_engine, speculative, step_clock
from xb.worker.backend import Done
from xb.worker.llama_engine import BatchEngine
from xb.worker.llama_model import LlamaModel
from xb.worker.llama_sampling import Sampler
from xb.worker.speculative import (
    PROBE_GAP,
    PROBE_TOKENS,
    Candidate,
    Drafter,
    NgramIndex,
    Speculation,
    verify,
)
from xb.worker.step_clock import STALE, StepClock, step_time, step_times

# ---- the parts ----------------------------------------------------------------------------


@pytest.mark.unit
def test_the_longest_recent_ngram_proposes_what_followed_it() -> None:
    index = NgramIndex()
    #             0  1  2  3  4  5  6  7  8  9
    context = [1, 2, 3, 4, 9, 2, 3, 5, 6, 7]
    assert index.propose(context, 3) == []  # "6 7" and "7" alone: no earlier 2-gram
    context += [1, 2, 3]  # "2 3" last followed by 5; "1 2 3" by 4: the longer wins
    assert index.propose(context, 3) == [4, 9, 2]
    assert index.propose([*context, 4], 2) == [9, 2]


@pytest.mark.unit
def test_a_draft_that_reaches_the_end_repeats_the_loop_it_found() -> None:
    assert NgramIndex().propose([5, 1, 2, 1, 2], 5) == [1, 2, 1, 2, 1]


@pytest.mark.unit
def test_the_context_is_extended_step_by_step_and_taken_whole_when_it_does_not_continue() -> None:
    index = NgramIndex()
    context = index.follow([1, 2, 3, 1], 2)
    assert context == [1, 2, 3, 1, 2] and index.propose(context, 2) == [3, 1]
    # The step decoded 2 and the draft's 3; the model's next token is 1: the same list.
    assert index.follow([1, 2, 3, 1, 2, 3], 1) is context
    assert context == [1, 2, 3, 1, 2, 3, 1] and index.propose(context, 2) == [2, 3]
    # Cells that do not continue the context (a slot reused): started over, indexed afresh.
    assert index.follow([7, 8], 9) == [7, 8, 9] and index.propose(context, 2) == []
    assert index.follow([7, 8, 9, 7], 8) == [7, 8, 9, 7, 8] and index.propose(context, 1) == [9]


@pytest.mark.unit
def test_a_draft_is_worth_its_first_tokens_rate_then_the_later_ones() -> None:
    new = Speculation.expecting(0.5)
    assert new.gains(3) == pytest.approx([0.0, 0.5, 0.75, 0.875])  # later: as the first
    new.record(1, 1)  # a one-token draft says nothing of later tokens
    new.record(4, 0)  # nor one wrong at the first
    assert (new.hits, new.tries) == (0.0, 0.0)
    assert new.first == pytest.approx((0.5 * 0.8 + 1) * 0.8 / ((0.8 + 1) * 0.8 + 1))
    new.record(5, 3)  # two later tokens right, then one wrong
    assert (new.hits, new.tries) == (2.0, 3.0)
    assert new.rate == pytest.approx((2 + new.first) / 4)
    assert (new.drafted, new.accepted) == (10, 4)


@pytest.mark.unit
def test_a_check_keeps_the_agreeing_prefix_and_the_models_own_next_token() -> None:
    said = iter([10, 11, 7, 99])
    assert verify(lambda i: next(said), [10, 11, 12], lambda t: False, 10) == [10, 11, 7]
    # All agreed: the token after the draft comes free.
    said = iter([10, 11, 12, 13])
    assert verify(lambda i: next(said), [10, 11, 12], lambda t: False, 10) == [10, 11, 12, 13]
    said = iter([10, 0, 12, 13])  # 0 ends the answer, even where the draft agreed
    assert verify(lambda i: next(said), [10, 0, 12], lambda t: t == 0, 10) == [10, 0]
    said = iter([10, 11, 12, 13])
    assert verify(lambda i: next(said), [10, 11, 12], lambda t: False, 2) == [10, 11]


def at(rate: float) -> Speculation:
    """A sequence whose ten latest checks came true at ``rate``, first tokens and later."""
    return Speculation(first_hits=10 * rate, firsts=10.0, hits=10 * rate, tries=10.0)


def timed(drafter: Drafter, seconds: dict[int, float]) -> Drafter:
    for size, value in seconds.items():
        drafter.clock.record(size, 100.0)  # the first step of a size allocates: not counted
        drafter.clock.record(size, value)
    return drafter


@pytest.mark.unit
def test_step_times_skip_the_first_of_a_size_and_forget_old_ones() -> None:
    clock = StepClock()
    assert clock.estimate(1) is None
    clock.record(1, 50.0)
    assert clock.estimate(1) is None
    for seconds in (1.0, 1.2, 9.0):
        clock.record(1, seconds)
    assert clock.estimate(1) == 1.2  # the median of the last few
    assert clock.estimate(3) == pytest.approx(1.2 * 1.04)  # a guess, to go and measure
    clock.record(5, 0.0)
    clock.record(5, 2.0)
    assert clock.estimate(3) == pytest.approx(1.6)
    for _ in range(STALE + 1):
        clock.record(1, 1.2)
    assert clock.estimate(3) == pytest.approx(1.2 * 1.04)  # size 5 is long gone


@pytest.mark.unit
def test_step_times_measured_at_load_stand_until_enough_live_ones_replace_them() -> None:
    clock, decoded = StepClock(), []

    def decode(n: int) -> float:
        decoded.append(n)
        return 1.0 + n / 10

    clock.calibrate(decode, most=8)
    assert decoded == [1, 1, 2, 2, 4, 4, 8, 8]  # each size twice: the first allocates
    assert clock.estimate(6) == pytest.approx(1.6)
    clock.record(8, 100.0)  # the first live step of a size is not counted ...
    clock.record(8, 9.0)  # ... and one slow step does not outweigh the load's measurement
    assert clock.estimate(8) == pytest.approx(1.8)
    clock.record(8, 2.0)
    clock.record(8, 2.1)
    assert clock.estimate(8) == pytest.approx(2.1)  # the median of three live ones
    for seconds in (100.0, 9.0, 9.0, 9.0):  # the machine was busy for a while
        clock.record(4, seconds)
    assert clock.estimate(4) == pytest.approx(2.1)  # no dearer than a bigger step
    for seconds in (100.0, 0.1, 0.1, 0.1):
        clock.record(1, seconds)
    assert clock.estimate(2) == pytest.approx(0.2)  # nor than two steps of one
    for _ in range(STALE + 1):
        clock.record(16, 4.0)
    assert clock.known() == pytest.approx({1: 1.1, 2: 1.2, 4: 1.4, 8: 1.8, 16: 4.0})


@pytest.mark.unit
def test_step_times_measured_at_load_are_scaled_to_the_live_ones_nearest_them() -> None:
    clock = StepClock()
    clock.calibrate(lambda n: 1.0 + n / 10, most=16)  # 1.1, 1.2, 1.4, 1.8 and 2.6
    for seconds in (100.0, 1.65, 1.65, 1.65):  # one-token steps take 1.5 times as long live
        clock.record(1, seconds)
    # A two-token step is weighed against them at the same scale, not at load's.
    assert clock.known() == pytest.approx({1: 1.65, 2: 1.8, 4: 2.1, 8: 2.7, 16: 3.9})
    clock.record(3, 100.0)
    clock.record(3, 9.0)  # one slow step of a size not timed at load stands for itself ...
    assert clock.known() == pytest.approx({1: 1.65, 2: 1.8, 3: 2.1, 4: 2.1, 8: 2.7, 16: 3.9})
    for seconds in (2.6, 2.6, 2.6):  # ... where three (1.3 between sizes 2 and 4 at load)
        clock.record(3, seconds)
    # ... scale others: sizes 2 and up go by size 3's ratio, 2, nearer them than size 1's.
    assert clock.known() == pytest.approx({1: 1.65, 2: 2.4, 3: 2.6, 4: 2.8, 8: 3.6, 16: 5.2})


@pytest.mark.unit
def test_calibration_stops_when_its_time_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step_clock, "CALIBRATION_SECONDS", 0.0)
    decoded: list[int] = []
    StepClock().calibrate(lambda n: decoded.append(n) or 1.0, most=64)
    assert decoded == [1, 1]  # a slow model times its smallest step, and guesses the rest


@pytest.mark.unit
def test_drafts_are_as_long_as_they_pay_on_the_measured_step_times() -> None:
    proposal = list(range(8))
    sure, unsure = at(0.9), at(0.1)
    # Each drafted token adds 10% to a step: a 90% guess pays for a long draft, a 10%
    # one for none.
    drafter = timed(Drafter(8), {n: 1.0 + 0.1 * (n - 1) for n in (1, 9)})
    assert len(drafter.plan([Candidate(sure, proposal, 100)], 1, 100)[0]) >= 5
    assert drafter.plan([Candidate(unsure, proposal, 100)], 1, 100) == [[]]
    # Steps that cost nothing more: even the 10% guess drafts; never past the room left.
    free = timed(Drafter(8), {1: 1.0, 9: 1.0})
    assert len(free.plan([Candidate(unsure, proposal, 100)], 1, 100)[0]) == 8
    assert len(free.plan([Candidate(sure, proposal, 3)], 1, 100)[0]) == 3


@pytest.mark.unit
def test_the_plan_reads_step_times_worked_out_again_every_few_steps() -> None:
    sure = at(0.9)
    drafter = timed(Drafter(8), {1: 1.0, 9: 1.8})
    candidate = Candidate(sure, list(range(8)), 100)
    assert len(drafter.plan([candidate], 1, 100)[0]) >= 5
    for _ in range(speculative.REFRESH):  # steps of 9 got dear: drafts no longer pay
        drafter.clock.record(9, 20.0)
    assert drafter.plan([candidate], 1, 100) == [[]]
    # Timed afresh at load (steps of up to 8 cheap again), or another clock: read at once.
    drafter.clock.calibrate(lambda n: 1.0 + 0.1 * (n - 1), most=8)
    assert 5 <= len(drafter.plan([candidate], 1, 100)[0]) <= 7  # not the dear step of 9
    drafter.clock = timed(Drafter(8), {1: 1.0, 9: 20.0}).clock
    assert drafter.plan([candidate], 1, 100) == [[]]
    # A step bigger than the table: worked out for it, and kept as big after a refresh.
    many = [Candidate(sure, list(range(8)), 100) for _ in range(9)]
    drafter.plan(many, 9, 100)
    for _ in range(speculative.REFRESH):
        drafter.clock.record(9, 20.0)
    drafter.plan([candidate], 1, 100)
    assert drafter._table is not None and len(drafter._table[2]) > 9 + 9 * 8


@pytest.mark.unit
def test_a_step_costs_a_part_for_each_row_length() -> None:
    times = step_times({1: 1.0, 4: 2.0, 16: 5.0, 20: 6.0}, 20)
    assert times[:5] == pytest.approx([1.0, 1.0, 4 / 3, 5 / 3, 2.0])
    assert step_time(times, [5, 5, 5, 5]) == 6.0  # one part of 20 tokens
    assert step_time(times, [17, 1, 1, 1]) == 7.0  # 4 tokens, then 16 of one row
    assert step_time(times, [1]) == 1.0


@pytest.mark.unit
def test_drafts_do_not_slow_the_sequences_that_share_the_step_without_drafting() -> None:
    sure, fair = at(0.9), at(0.5)
    drafter = timed(Drafter(8), {n: 1.0 + 0.01 * (n - 2) for n in (1, 2, 18)})
    # Two rows, one with nothing to propose: a draft would be a second part of the step
    # (each sequence has cells of its own), nearly doubling it for the other: none.
    assert drafter.plan([Candidate(sure, list(range(8)), 100)], 2, 100) == [[]]
    # Both propose: both draft, as far as each may, in one part.
    both = [Candidate(sure, list(range(8)), 100), Candidate(fair, list(range(8)), 100)]
    assert [len(d) for d in drafter.plan(both, 2, 100)] == [8, 8]
    # One may draft 2 only: 8 for the other would take a second part, dearer than it pays.
    short = [Candidate(sure, list(range(8)), 100), Candidate(fair, [1, 2], 100)]
    assert [len(d) for d in drafter.plan(short, 2, 100)] == [2, 2]


@pytest.mark.unit
def test_a_draft_models_time_for_each_drafted_token_counts_in_the_plan() -> None:
    # Each checked token adds 10% to a step. A 90% guess free to make drafts long; one that
    # costs as much again for each token to guess (a draft model as slow as the model's
    # extra tokens) drafts shorter; one that costs a whole step a token, not at all.
    drafter = timed(Drafter(8), {n: 1.0 + 0.1 * (n - 1) for n in (1, 9)})
    sure = at(0.9)
    free = len(drafter.plan([Candidate(sure, list(range(8)), 100)], 1, 100)[0])
    cheap = len(drafter.plan([Candidate(sure, list(range(8)), 100, cost=0.1)], 1, 100)[0])
    assert free == 8 and 0 < cheap < free
    assert drafter.plan([Candidate(sure, list(range(8)), 100, cost=1.0)], 1, 100) == [[]]
    # Four sequences drafting together: the cost is each one's.
    four = [Candidate(at(0.9), list(range(8)), 100, cost=0.5) for _ in range(4)]
    assert drafter.plan(four, 4, 100) == [[]] * 4
    # Two rows, steps of any size taking as long: a dear guess likelier to come true than
    # a free one is weighed after it, so the free one drafts alone (weighed first, the dear
    # one would not pay alone nor with the other, and neither would draft).
    flat = timed(Drafter(8), {1: 1.0, 2: 1.0, 18: 1.0})
    dear, free_guess = Candidate(at(0.9), [1] * 8, 100, cost=1.0), Candidate(at(0.8), [2] * 8, 100)
    assert flat.plan([dear, free_guess], 2, 100) == [[], [2] * 8]


@pytest.mark.unit
def test_each_sequence_drafts_from_the_source_it_expects_more_of() -> None:
    drafter = timed(Drafter(8), {n: 1.0 + 0.1 * (n - 1) for n in (1, 9)})

    def lookup(speculation: Speculation, strong: bool = True) -> Candidate:
        speculation.trials = speculative.TRIALS  # tried already: its rates decide
        return Candidate(speculation, list(range(8)), 100, strong)

    def model(speculation: Speculation, cost: float) -> Candidate:
        return Candidate(speculation, [0] * 8, 100, True, cost)

    good, poor = lookup(at(0.9)), lookup(at(0.2))
    # Alike rates: the lookup, which costs nothing to guess; a model cheap and right more
    # often than the lookup: the model.
    assert drafter.prefer(good, model(at(0.9), 0.01), 1) is good
    sure_model = model(at(1.0), 0.01)
    assert drafter.prefer(poor, sure_model, 1) is sure_model
    # A model right every time but as slow as a step for each token: the lookup.
    assert drafter.prefer(lookup(at(0.7)), model(at(1.0), 1.0), 1).cost == 0.0
    # A model whose draft would just not pay (a token for each 0.9 of a step it costs) is
    # not taken over even a lookup that is never right: that one may still probe.
    never = lookup(at(0.0))
    assert drafter.prefer(never, model(at(1.0), 0.9), 1) is never
    # A lookup's first few strong guesses are taken, however the model does; then its
    # rates decide. A weak guess is not taken to try it.
    untried = Candidate(Speculation(), list(range(8)), 100, strong=True)
    for _ in range(speculative.TRIALS):
        assert drafter.prefer(untried, sure_model, 1) is untried
    assert drafter.prefer(untried, sure_model, 1) is sure_model
    weak = Candidate(Speculation(), list(range(8)), 100, strong=False)
    assert drafter.prefer(weak, sure_model, 1) is sure_model


def drafts_until(drafter: Drafter, candidate: Candidate, limit: int = 10_000) -> int:
    """The step, counted from 1, at which ``candidate`` drafts (its draft then checked, all
    wrong)."""
    for steps in range(1, limit):
        draft = drafter.plan([candidate], 1, 100)[0]
        if draft:
            candidate.speculation.record(len(draft), 0)
            return steps
    raise AssertionError(f"no draft in {limit} steps")


@pytest.mark.unit
def test_a_sequence_whose_drafts_do_not_pay_probes_less_and_less_often() -> None:
    wrong = Speculation()
    for _ in range(10):
        wrong.record(4, 0)
    drafter = timed(Drafter(8), {1: 1.0, 9: 1.8})
    strong = Candidate(wrong, [1, 2, 3, 4, 5, 6], 100, strong=True)
    first = drafter.plan([strong], 1, 100)[0]
    assert first == strong.proposal[:PROBE_TOKENS]  # a probe, though the plan would not pay
    wrong.record(4, 0)
    waits = [drafts_until(drafter, strong) for _ in range(4)]
    assert waits == [PROBE_GAP, 2 * PROBE_GAP, 4 * PROBE_GAP, 8 * PROBE_GAP]
    # A weak proposal (a short n-gram matched) never probes.
    weak = Candidate(at(0.1), [1, 2, 3, 4], 100)
    assert not any(drafter.plan([weak], 1, 100)[0] for _ in range(2000))


@pytest.mark.unit
def test_probes_that_come_true_lead_to_drafts_as_long_as_they_pay() -> None:
    # Each drafted token adds 40% to a step: at the prior rate a draft does not pay.
    drafter = timed(Drafter(16), {n: 1.0 + 0.4 * (n - 1) for n in (1, 17)})
    new = Speculation()
    candidate = Candidate(new, list(range(16)), 1000, strong=True)
    lengths = []
    for _ in range(8):
        draft = drafter.plan([candidate], 1, 100)[0]
        lengths.append(len(draft))
        new.record(len(draft), len(draft))  # every guess came true
    assert lengths[0] == PROBE_TOKENS
    assert lengths == sorted(lengths) and lengths[-1] == 16, lengths
    assert new.gap == PROBE_GAP and new.wait == 0


@pytest.mark.unit
def test_sequences_that_share_a_step_probe_together_where_one_alone_would_not_pay() -> None:
    # Four rows of a token each take 1.0; one row a token longer needs a second part of
    # the step (0.5 more for 25% more tokens); all four a token longer, one part of 1.6.
    # At the prior rate no draft pays (4 + 4 x 0.35 tokens in 1.6 against 4 in 1.0).
    drafter = timed(Drafter(8), {1: 0.5, 4: 1.0, 8: 1.6})
    four = [Candidate(Speculation(), list(range(8)), 100, strong=True) for _ in range(4)]
    assert drafter.plan(four, 4, 100) == [[0]] * 4  # probes, all four in the one part
    assert all(c.speculation.probing for c in four)
    # One strong guess among weak ones: its probe alone would not pay, so none.
    mixed = [Candidate(Speculation(), list(range(8)), 100, strong=i == 0) for i in range(4)]
    assert drafter.plan(mixed, 4, 100) == [[]] * 4
    assert not any(c.speculation.probing for c in mixed)


@pytest.mark.unit
def test_a_probe_goes_and_measures_a_step_size_known_only_from_the_load() -> None:
    # At load the machine was busy for steps of two tokens and more: each is taken as dear
    # as that many steps of one (the most ``known`` allows), where a probe that came true
    # would not pay.
    clock = StepClock()
    clock.calibrate(lambda n: 1.0 if n == 1 else 3.0 * n, most=8)
    for _ in range(4):
        clock.record(1, 1.0)
    assert clock.known()[2] == 2.0 and 2 not in clock.measured()

    def probes(cost: float = 0.0, rows: int = 1) -> bool:
        candidate = Candidate(Speculation(), list(range(8)), 100, strong=True, cost=cost)
        return Drafter(8, clock).plan([candidate], rows, 100)[0] == [0] * PROBE_TOKENS

    assert probes()  # to go and measure a step of two tokens
    assert not probes(rows=2)  # a step of two parts, which the clock does not time
    assert not probes(cost=0.5)  # a draft model's probe costs its decoding: weighed as is
    for seconds in (100.0, 2.0, 2.0, 2.0):  # the first of a size is not counted
        clock.record(2, seconds)
    assert 2 in clock.measured()
    assert not probes()  # measured: two tokens in twice the time do not pay
    for seconds in (1.2, 1.2, 1.2):
        clock.record(2, seconds)
    assert probes()  # they do at 1.2
    for _ in range(STALE + 1):
        clock.record(1, 1.0)
    assert 2 not in clock.measured()  # forgotten, and measured again
    assert probes()


# ---- in the engine ------------------------------------------------------------------------


class Eager(Drafter):
    """Every proposal is drafted in full, whatever its odds (the test model's steps are so
    short that their timings are mostly noise), as far as room and the batch allow."""

    def plan(self, candidates: list[Candidate], rows: int, budget: int) -> list[list[int]]:
        drafts = []
        for candidate in candidates:
            take = min(len(candidate.proposal), candidate.room, self.draft_tokens, budget)
            drafts.append(candidate.proposal[:take])
            budget -= take
        return drafts


def new_engine(path: Path, drafts: bool, parallel: int = 4) -> BatchEngine:
    spec = ModelSpec("t", "t", str(path), n_ctx=N_CTX)
    drafter = Eager(8) if drafts else None
    model = LlamaModel(path, spec, threads=1)
    return BatchEngine(model, n_ctx=N_CTX, n_parallel=parallel, drafter=drafter)


@pytest.fixture
def engines(tiny_model: Path) -> Iterator[tuple[BatchEngine, BatchEngine]]:
    """The same model with drafts on and off, nothing cached."""
    on, off = new_engine(tiny_model, True), new_engine(tiny_model, False)
    on._cells.cache.budget = off._cells.cache.budget = 0
    yield on, off
    on.close()
    off.close()


def done(items: list[object]) -> Done:
    assert isinstance(items[-1], Done), items[-1]
    return items[-1]


@pytest.mark.integration
def test_step_times_are_known_before_the_first_request_and_leave_no_cells(
    tiny_model: Path,
) -> None:
    spec = ModelSpec("t", "t", str(tiny_model), n_ctx=N_CTX)
    drafter = Drafter(8)
    engine = BatchEngine(LlamaModel(tiny_model, spec, threads=1), N_CTX, 2, drafter=drafter)
    try:
        assert set(drafter.clock.known()) >= {1, 2, 4, 8, 16}
        for slot in range(engine.slots):
            assert engine._llama.llama_memory_seq_pos_max(engine._cells.memory, slot) == -1
        items = run(engine, {"a": ("completion", greedy("the sea", 20))})["a"]
        assert len(tokens(items)) == 20
    finally:
        engine.close()


@pytest.mark.integration
def test_a_replica_timed_too_dear_at_load_still_drafts(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Steps of two tokens and more timed as dear as that many steps of one at load (the
    # machine was busy: another replica starting on the same cores). At those times no
    # draft pays, and the replica once never drafted again.
    timing = BatchEngine._time_step

    def busy(engine: BatchEngine, n: int) -> float:
        timing(engine, n)
        return 1e-3 * n

    with monkeypatch.context() as patch:
        patch.setattr(BatchEngine, "_time_step", busy)
        spec = ModelSpec("t", "t", str(tiny_model), n_ctx=N_CTX)
        drafter = Drafter(8)
        engine = BatchEngine(LlamaModel(tiny_model, spec, threads=1), N_CTX, 2, drafter=drafter)
    try:
        drafted = 0
        for words in ("the sea", "once upon a time", "ba ce di"):
            usage = done(run(engine, {"a": ("completion", greedy(words, 300))})["a"]).usage
            drafted += usage.accepted_prediction_tokens + usage.rejected_prediction_tokens
        assert drafted > 0
        assert 2 in drafter.clock.measured()  # from here on, its live times decide
    finally:
        engine.close()


@pytest.mark.integration
def test_a_step_that_tries_the_other_thread_count_is_no_sample_of_step_times(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ModelSpec("t", "t", str(tiny_model), n_ctx=N_CTX)
    drafter = Drafter(8)
    engine = BatchEngine(LlamaModel(tiny_model, spec, threads=1), N_CTX, 2, drafter=drafter)
    tuner = engine._tuner
    try:
        with monkeypatch.context() as patch:  # every step tries the other count
            patch.setattr(tuner, "before", lambda *_: setattr(tuner, "trying", True))
            run(engine, {"a": ("completion", greedy("the sea", 20))})
        assert drafter.clock.count == 0
        run(engine, {"a": ("completion", greedy("the sea", 20))})
        assert drafter.clock.count > 0  # its steps, but any that checked drafts in two parts
    finally:
        engine.close()


@pytest.mark.integration
def test_a_greedy_answer_is_the_same_with_drafts_and_without(
    engines: tuple[BatchEngine, BatchEngine],
) -> None:
    on, off = engines
    for words in ("the sea", "once upon a time", "ba ce di"):
        params = {"a": ("completion", greedy(words, 300))}
        drafted, plain = run(on, params)["a"], run(off, params)["a"]
        assert tokens(drafted) == tokens(plain)
        usage = done(drafted).usage
        assert usage.completion_tokens == 300
        assert usage.accepted_prediction_tokens > 50  # its loops were guessed
        assert done(plain).usage.accepted_prediction_tokens == 0


@pytest.mark.integration
def test_a_greedy_answer_is_the_same_with_drafts_batched_with_others(
    engines: tuple[BatchEngine, BatchEngine],
) -> None:
    on, off = engines
    alone = tokens(run(off, {"a": ("completion", greedy("the sea", 200))})["a"])
    opted_out = GenerateParams(prompt="lo", max_tokens=150, temperature=0, speculative=False)
    requests = {
        "x": ("completion", greedy("once upon a time", 120)),
        "a": ("completion", greedy("the sea", 200)),
        "y": ("chat", GenerateParams(messages=[ChatMessage("user", "hi")], max_tokens=90)),
        "z": ("completion", opted_out),
    }
    drafted, plain = run(on, requests), run(off, requests)
    assert tokens(drafted["a"]) == alone
    assert tokens(drafted["x"]) == tokens(plain["x"])
    assert tokens(drafted["z"]) == tokens(plain["z"])
    assert done(drafted["a"]).usage.accepted_prediction_tokens > 0
    z = done(drafted["z"]).usage  # the request that opted out drafted nothing
    assert z.accepted_prediction_tokens == z.rejected_prediction_tokens == 0


def assert_no_stray_cells(engine: BatchEngine) -> None:
    """Each slot's cells end where the tokens the engine thinks they hold end."""
    memory, pos_max = engine._cells.memory, engine._llama.llama_memory_seq_pos_max
    running = {s.seq_id: s.kv for s in engine._running}
    kept = engine._cells.cache.kept()
    for slot in range(engine.slots):
        held = running.get(slot, kept.get(slot, []))
        assert pos_max(memory, slot) == len(held) - 1, (slot, len(held))


@pytest.mark.integration
def test_rolled_back_drafts_leave_no_cells_and_the_follow_up_reuses_the_rest(
    tiny_model: Path,
) -> None:
    on, off = new_engine(tiny_model, True), new_engine(tiny_model, False)
    try:
        answers = {}
        for name, engine in (("on", on), ("off", off)):
            history = [ChatMessage("user", "tell me about " + "the sea " * 20)]
            kept = 0
            for turn in range(3):
                params = GenerateParams(messages=history, max_tokens=60 + turn, temperature=0)
                engine.add("r", "chat", params)
                items: list[object] = []
                while engine.busy:
                    items += [item for _, item in engine.step()]
                    assert_no_stray_cells(engine)
                usage = done(items).usage
                if name == "on":
                    assert usage.rejected_prediction_tokens > 0  # something was rolled back
                assert usage.cached_tokens == kept  # the whole conversation so far
                kept = len(engine._cells.cache.kept()[0])
                assert kept == usage.total_tokens
                reply = "".join(tokens(items))
                history += [ChatMessage("assistant", reply), ChatMessage("user", "and?")]
            answers[name] = [m.content for m in history]
        assert answers["on"] == answers["off"]
    finally:
        on.close()
        off.close()


@pytest.mark.integration
def test_a_stop_string_inside_an_accepted_draft_ends_the_answer_there(
    engines: tuple[BatchEngine, BatchEngine],
) -> None:
    """The tokens of a draft after the one that completes a stop string are rolled back, and
    the finished answer's cells hold its prompt and answer, no more."""
    on, off = engines
    on._cells.cache.budget = off._cells.cache.budget = 10_000
    loop = "".join(tokens(run(off, {"a": ("completion", greedy("the sea", 300))})["a"]))
    # Longer than the loop the answer fell into: it is completed well inside the loop, where
    # drafts come true.
    stop = loop[len(loop) // 2 : len(loop) // 2 + 80]
    params = GenerateParams(prompt="the sea", max_tokens=300, temperature=0, stop=[stop])
    answers = {}
    for name, engine in (("on", on), ("off", off)):
        engine.add("s", "completion", params)
        items: list[object] = []
        while engine.busy:
            items += [item for _, item in engine.step()]
            assert_no_stray_cells(engine)
        assert done(items).finish_reason == "stop"
        answers[name] = "".join(tokens(items))
        if name == "on":
            assert done(items).usage.accepted_prediction_tokens > 0
    assert answers["on"] == answers["off"] == loop[: loop.index(stop)]
    assert (
        on._cells.cache.kept()[0] == off._cells.cache.kept()[0]
    )  # not the token that completed it


@pytest.mark.integration
def test_drafted_tokens_are_accepted_with_the_models_own_probability(
    engines: tuple[BatchEngine, BatchEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The speculative sampling rule, on a vocabulary of three (top_k 3, temperature 0.5,
    no top-p or min-p: the chain's final distribution ``p`` is the softmax of the three
    best logits over 0.5). At each drafted position, over 600 seeded requests: the draft
    ``x`` is accepted with probability ``p(x)``, and a rejected draw is ``p`` without ``x``
    (here: how often it is the likelier of the two others). Each count is compared with
    its expectation, in standard deviations."""
    on, _ = engines
    n_vocab, probabilities = on._model.n_vocab, []
    checks: list[tuple[dict[int, float], int, int]] = []  # p, drafted, chosen

    def sample(sampler: Sampler, ctx: object, row: int) -> int:
        pointer = llama_cpp.llama_get_logits_ith(ctx, row)
        logits = np.ctypeslib.as_array(pointer, shape=(n_vocab,)).astype(np.float64)
        best = np.argsort(-logits)[:3]
        weights = np.exp((logits[best] - logits[best].max()) / 0.5)
        shares = (weights / weights.sum()).tolist()
        probabilities.append(dict(zip(best.tolist(), shares, strict=True)))
        return real_sample(sampler, ctx, row)

    def checked(draw: Callable[[int], int], draft: list[int], *rest: Any) -> list[int]:
        probabilities.clear()
        chosen = verify(draw, draft, *rest)
        checks.extend(zip(probabilities, draft, chosen, strict=False))
        return chosen

    real_sample = Sampler.sample
    monkeypatch.setattr(Sampler, "sample", sample)
    monkeypatch.setattr(llama_engine, "verify", checked)
    for batch in range(150):
        requests = {}
        for seed in range(batch * 4, batch * 4 + 4):
            params = GenerateParams(
                prompt="ka lo ka lo",
                max_tokens=24,
                temperature=0.5,
                top_k=3,
                top_p=1.0,
                min_p=0.0,
                seed=seed,
            )
            requests[str(seed)] = ("completion", params)
        for items in run(on, requests).values():
            assert len(tokens(items)) == 24
    accepted = [(p, x) for p, x, t in checks if t == x]
    assert all(x in p for p, x in accepted)  # never a token the chain cannot draw
    hits = len(accepted)
    mean = sum(p.get(x, 0.0) for p, x, _ in checks)
    spread = math.sqrt(sum(p.get(x, 0.0) * (1 - p.get(x, 0.0)) for p, x, _ in checks))
    assert len(checks) > 1000 and 200 < hits < len(checks) - 200
    assert abs(hits - mean) < 4 * spread, (hits, mean, spread)

    rejected = [(p, x, t) for p, x, t in checks if t != x and len(set(p) - {x}) == 2]
    likelier = []
    for p, x, t in rejected:
        first, second = sorted(set(p) - {x}, key=lambda token: -p[token])
        likelier.append((p[first] / (p[first] + p[second]), t == first))
    hits = sum(hit for _, hit in likelier)
    mean = sum(q for q, _ in likelier)
    spread = math.sqrt(sum(q * (1 - q) for q, _ in likelier))
    assert len(likelier) > 200
    assert abs(hits - mean) < 4 * spread, (hits, mean, spread)
