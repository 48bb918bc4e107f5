"""Preemption in the batch engine: an interactive request that finds every slot held by
batch sequences takes one's slot; the batch sequence's cells are parked and it resumes
where it stopped, its answer the same as if it had run alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from xb.core.protocol import ChatMessage, GenerateParams, ModelSpec
from xb.worker.backend import Done, Piece
from xb.worker.llama_engine import PREFILL_CHUNK, BatchEngine
from xb.worker.llama_model import LlamaModel

N_CTX = 1024


@pytest.fixture
def engine(tiny_model: Path) -> Iterator[BatchEngine]:
    spec = ModelSpec("t", "t", str(tiny_model), n_ctx=N_CTX)
    engine = BatchEngine(LlamaModel(tiny_model, spec, threads=1), n_ctx=N_CTX, n_parallel=2)
    engine._cells.cache.budget = 0  # every answer computes its whole prompt, alone or not
    yield engine
    engine.close()


def greedy(words: str, n: int) -> GenerateParams:
    return GenerateParams(prompt=words, max_tokens=n, temperature=0)


def alone(engine: BatchEngine, params: GenerateParams) -> list[str]:
    engine.add("alone", "completion", params, "batch")
    items = []
    while engine.busy:
        items += [item for _, item in engine.step()]
    assert isinstance(items[-1], Done)
    return [i.text for i in items if isinstance(i, Piece)]


class Log:
    """Each request's items, and the step at which each arrived."""

    def __init__(self, engine: BatchEngine) -> None:
        self.engine = engine
        self.items: dict[str, list[object]] = {}
        self.steps: dict[str, list[int]] = {}
        self.step_count = 0

    def step(self) -> None:
        for rid, item in self.engine.step():
            self.items.setdefault(rid, []).append(item)
            self.steps.setdefault(rid, []).append(self.step_count)
        self.step_count += 1

    def until_idle(self) -> None:
        while self.engine.busy:
            self.step()
            assert self.step_count < 5_000

    def text(self, rid: str) -> list[str]:
        assert isinstance(self.items[rid][-1], Done), self.items[rid][-1]
        return [i.text for i in self.items[rid] if isinstance(i, Piece)]

    def done(self, rid: str) -> Done:
        done = self.items[rid][-1]
        assert isinstance(done, Done)
        return done


@pytest.mark.integration
def test_an_interactive_request_preempts_a_batch_sequence_that_resumes_unchanged(
    engine: BatchEngine,
) -> None:
    a, b = greedy("once upon a time", 120), greedy("the sea and the sky", 120)
    want_a, want_b = alone(engine, a), alone(engine, b)
    log = Log(engine)
    engine.add("a", "completion", a, "batch")
    engine.add("b", "completion", b, "batch")
    for _ in range(30):
        log.step()
    engine.add("chat", "completion", greedy("hello", 20), "interactive")
    asked = log.step_count
    log.until_idle()
    # The chat joined at once: its first token came from the step after it arrived.
    assert log.steps["chat"][0] == asked
    assert len(log.text("chat")) == 20
    # One batch sequence gave its slot up and sent nothing until the chat ended.
    preempted = [rid for rid in "ab" if log.done(rid).preemptions]
    assert len(preempted) == 1
    (rid,) = preempted
    paused = [s for s in log.steps[rid] if asked <= s <= log.steps["chat"][-1]]
    assert paused == []
    # Resumed where it stopped: no token repeated or lost, the text as if alone.
    assert log.text("a") == want_a
    assert log.text("b") == want_b
    assert log.done(rid).usage.completion_tokens == 120


@pytest.mark.integration
def test_interactive_requests_do_not_preempt_each_other(engine: BatchEngine) -> None:
    log = Log(engine)
    engine.add("a", "completion", greedy("once upon a time", 60))
    engine.add("b", "completion", greedy("the sea", 60))
    for _ in range(5):
        log.step()
    engine.add("c", "completion", greedy("hello", 10))
    asked = log.step_count
    log.until_idle()
    assert log.steps["c"][0] > asked + 40  # it waited for a slot to free
    assert not any(log.done(rid).preemptions for rid in "abc")


@pytest.mark.integration
def test_waiting_interactive_requests_join_before_waiting_batch_ones(
    engine: BatchEngine,
) -> None:
    log = Log(engine)
    engine.add("a", "completion", greedy("once", 30))
    engine.add("b", "completion", greedy("twice", 60))
    engine.add("batch", "completion", greedy("thrice", 5), "batch")
    engine.add("chat", "completion", greedy("again", 5))
    log.until_idle()
    assert log.steps["chat"][0] < log.steps["batch"][0]


@pytest.mark.integration
def test_a_sequence_preempted_while_its_prompt_is_read_resumes_reading_it(
    engine: BatchEngine,
) -> None:
    long = greedy("lo ma " * PREFILL_CHUNK, 20)
    want = alone(engine, long)
    log = Log(engine)
    other = greedy("ka " * PREFILL_CHUNK * 2, 80)  # more cells than the long one will have
    engine.add("other", "completion", other, "batch")
    log.step()
    engine.add("long", "completion", long, "batch")
    log.step()  # its first chunk is read
    reading = next(s for s in engine._running if s.request_id == "long")
    assert 0 < len(reading.kv) < len(reading.prompt)
    engine.add("chat", "completion", greedy("hello", 5))
    log.until_idle()
    assert log.done("long").preemptions == 1  # the one with fewer cells to park
    assert log.text("long") == want


@pytest.mark.integration
def test_a_preempted_sequence_can_be_cancelled_while_it_waits(engine: BatchEngine) -> None:
    log = Log(engine)
    engine.add("a", "completion", greedy("once upon a time", 200), "batch")
    engine.add("b", "completion", greedy("the sea", 200), "batch")
    for _ in range(3):
        log.step()
    engine.add("chat", "completion", greedy("hello", 30))
    log.step()
    parked = [s.request_id for s in engine._waiting if s.parked is not None]
    assert len(parked) == 1
    assert engine.cancel(parked[0])
    log.until_idle()
    assert len(log.text("chat")) == 30
    assert not any(isinstance(i, Done) for i in log.items.get(parked[0], []))


@pytest.mark.integration
def test_no_preemption_when_a_slot_frees_after_this_step(engine: BatchEngine) -> None:
    # A chat cut at max_tokens keeps its slot one more step to decode its last token.
    engine._cells.cache.budget = 10_000
    chat = GenerateParams(messages=[ChatMessage("user", "hi")], max_tokens=10)
    log = Log(engine)
    engine.add("closing", "chat", chat, "batch")
    engine.add("long", "completion", greedy("once upon a time", 60), "batch")
    while "closing" not in log.items or not isinstance(log.items["closing"][-1], Done):
        log.step()
    assert any(s.closing for s in engine._running)
    engine.add("chat", "completion", greedy("hello", 5))
    log.until_idle()
    assert log.done("long").preemptions == 0
    assert log.steps["chat"][0] == log.steps["closing"][-1] + 2  # after the closing step


@pytest.mark.integration
def test_a_tenant_with_nothing_running_preempts_one_holding_every_slot(
    engine: BatchEngine,
) -> None:
    a, b = greedy("once upon a time", 120), greedy("the sea and the sky", 120)
    want = {"a": alone(engine, a), "b": alone(engine, b)}
    log = Log(engine)
    engine.add("a", "completion", a, "interactive", "alice")
    engine.add("b", "completion", b, "interactive", "alice")
    for _ in range(30):
        log.step()
    engine.add("bob", "completion", greedy("hello", 20), "interactive", "bob")
    asked = log.step_count
    log.until_idle()
    assert log.steps["bob"][0] == asked  # it joined at once
    preempted = [rid for rid in "ab" if log.done(rid).preemptions]
    assert len(preempted) == 1
    assert {rid: log.text(rid) for rid in "ab"} == want


@pytest.mark.integration
def test_tenants_holding_one_slot_each_are_not_preempted(engine: BatchEngine) -> None:
    log = Log(engine)
    engine.add("a", "completion", greedy("once upon a time", 60), "interactive", "alice")
    engine.add("c", "completion", greedy("the sea", 60), "interactive", "carol")
    for _ in range(5):
        log.step()
    engine.add("bob", "completion", greedy("hello", 10), "interactive", "bob")
    asked = log.step_count
    log.until_idle()
    assert log.steps["bob"][0] > asked + 40  # it waited for a slot to free
    assert not any(log.done(rid).preemptions for rid in ("a", "c", "bob"))


@pytest.mark.integration
def test_a_batch_request_never_preempts_an_interactive_one(engine: BatchEngine) -> None:
    log = Log(engine)
    engine.add("a", "completion", greedy("once upon a time", 60), "interactive", "alice")
    engine.add("b", "completion", greedy("the sea", 60), "interactive", "alice")
    for _ in range(5):
        log.step()
    engine.add("eval", "completion", greedy("hello", 10), "batch", "eval")
    asked = log.step_count
    log.until_idle()
    assert log.steps["eval"][0] > asked + 40
    assert not any(log.done(rid).preemptions for rid in ("a", "b"))
