"""Drafts from a draft model: the vocabulary check at load, greedy answers unchanged alone,
batched, across the prefix cache and preemption, and the draft model's cells always what
it thinks they are (every proposal is the one a fresh draft model makes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.worker.test_backend import greedy, run, tokens
from tests.worker.test_preemption import Log
from tests.worker.test_speculative import Eager, done
from xb.broker.management import Management
from xb.core.demo_model import DemoModelConfig, write_demo_model
from xb.core.engines import of_spec
from xb.core.paths import MODEL_DIRS_ENV
from xb.core.protocol import ChatMessage, GenerateParams, ModelSpec
from xb.worker import draft_model
from xb.worker.backend import BackendError
from xb.worker.draft_model import P_MIN, DraftModel, Vocabulary, difference, load_draft
from xb.worker.llama_engine import BatchEngine
from xb.worker.llama_model import LlamaModel
from xb.worker.model_process import LoadError, load_engine
from xb.worker.speculative import Candidate, Drafter
from xb.worker.step_clock import StepClock

N_CTX = 1024


# ---- the vocabulary check -----------------------------------------------------------------


def words(*texts: str) -> Vocabulary:
    return Vocabulary(1, (("BOS", 1), ("EOS", 2), ("EOT", -1)), tuple(t.encode() for t in texts))


@pytest.mark.unit
def test_the_first_difference_between_vocabularies_is_named() -> None:
    assert difference(words("a", "b"), words("a", "b")) is None
    assert difference(words("a", "ab"), words("a", "cd")) == (
        "the draft model's vocabulary differs from the model's: token 1 is 'ab' there and 'cd' here"
    )
    assert "it has 3 tokens there and 2 here" in str(
        difference(words("a", "b", "c"), words("a", "b"))
    )
    other_eos = Vocabulary(1, (("BOS", 1), ("EOS", 3), ("EOT", -1)), (b"a", b"b"))
    assert "its EOS token is 3 there and 2 here" in str(difference(other_eos, words("a", "b")))
    other_kind = Vocabulary(2, words("a").specials, (b"a",))
    assert "its type is 2 there and 1 here" in str(difference(other_kind, words("a")))


# ---- in the engine ------------------------------------------------------------------------


def spec_of(target: Path, draft: Path | None) -> ModelSpec:
    return ModelSpec(
        "t",
        "t",
        str(target),
        n_ctx=N_CTX,
        speculative="draft" if draft else "off",
        draft_model=str(draft) if draft else None,
    )


class Checked:
    """Wraps a draft model: every proposal it makes is compared with the proposal of a
    second draft model that reads the whole context afresh each time, so cells the first
    kept wrongly (after a cut, a moved slot, a parked sequence) would show; ``asked``
    counts the sequences it was asked to draft for."""

    def __init__(self, live: DraftModel, reference: DraftModel) -> None:
        self.live, self.reference, self.proposals, self.asked = live, reference, 0, 0
        self.caught_up: list[int] = []  # tokens each proposal read before it drafted
        self.propose_live = live.propose
        live.propose = self.propose  # type: ignore[method-assign]

    def propose(
        self, wanted: list[tuple[int, list[int], int]], timed: bool = True
    ) -> list[list[int]]:
        drafts = self.propose_live(wanted, timed)
        self.asked += sum(1 for _, _, k in wanted if k > 0)
        self.caught_up.append(self.live._caught_up)
        for (_, context, k), drafted in zip(wanted, drafts, strict=True):
            if drafted:
                # The same tokens; where a draft stops (its next token below ``P_MIN``)
                # may differ for a probability within a hair of it, as the logits of a
                # batch and of a fresh read differ in their last digits.
                loose, strict = (self.fresh(context, k, P_MIN + d) for d in (-0.01, 0.01))
                assert drafted[: len(strict)] == strict and loose[: len(drafted)] == drafted
                self.proposals += 1
        return drafts

    def fresh(self, context: list[int], k: int, least: float) -> list[int]:
        """The reference's draft, every token read again, stopping below ``least``."""
        self.reference._sync(0, [])
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(draft_model, "P_MIN", least)
            return self.reference.propose([(0, context, k)])[0]


class ModelOnly(Eager):
    """Every draft from the draft model, none from n-gram lookup."""

    def prefer(self, lookup: Candidate, model: Candidate, rows: int) -> Candidate:
        return model


class Alternating(Eager):
    """Drafts from n-gram lookup and the draft model by turns, wherever lookup proposes:
    the draft model's cells then lag behind by the tokens lookup's drafts gave."""

    def __init__(self, draft_tokens: int) -> None:
        super().__init__(draft_tokens)
        self.turn = 0

    def prefer(self, lookup: Candidate, model: Candidate, rows: int) -> Candidate:
        self.turn += 1
        return lookup if self.turn % 2 else model


def new_engine(
    pair: tuple[Path, Path],
    drafts: bool,
    parallel: int = 4,
    drafter: Drafter | None = None,
    along: bool | None = None,
) -> tuple[BatchEngine, Checked | None]:
    """The pair's engine, with a checked draft model where ``drafts``, reading prompts
    along with the model where ``along`` (None: as its costs at load decide)."""
    target, draft = pair
    spec = spec_of(target, draft if drafts else None)
    model = LlamaModel(target, spec, threads=1)
    if not drafts:
        return BatchEngine(model, n_ctx=N_CTX, n_parallel=parallel), None
    live = load_draft(model, spec, parallel, threads=1)
    checked = Checked(live, load_draft(model, msgspec.structs.replace(spec, n_ctx=N_CTX), 1, 1))
    engine = BatchEngine(model, N_CTX, parallel, -1, drafter or ModelOnly(8), live)
    if along is not None:
        engine._read_along = along
    return engine, checked


# A draft model reads prompts along with the model, or at each sequence's first draft.
READING = pytest.mark.parametrize("along", [True, False], ids=["along", "first-draft"])


@pytest.fixture(params=[True, False], ids=["along", "first-draft"])
def engines(
    draft_pair: tuple[Path, Path], request: pytest.FixtureRequest
) -> Iterator[tuple[BatchEngine, BatchEngine, Checked]]:
    """The pair with the draft model on, and the model alone, nothing cached; the draft
    model reads prompts along with the model, and then at each sequence's first draft."""
    on, checked = new_engine(draft_pair, True, along=request.param)
    off, _ = new_engine(draft_pair, False)
    assert checked is not None
    on._cells.cache.budget = off._cells.cache.budget = 0
    yield on, off, checked
    checked.reference.close()
    on.close()
    off.close()


@pytest.mark.integration
def test_a_draft_model_of_another_vocabulary_is_refused_at_load(
    draft_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    other = write_demo_model(tmp_path / "other.gguf", DemoModelConfig(n_layer=1, n_words=399))
    spec = spec_of(draft_pair[0], other)
    model = LlamaModel(draft_pair[0], spec, threads=1)
    try:
        with pytest.raises(BackendError, match="it has 659 tokens there and 660 here"):
            load_draft(model, spec, 1, threads=1)
    finally:
        model.close()


@pytest.mark.integration
def test_a_greedy_answer_is_the_same_with_a_draft_model_alone_and_batched(
    engines: tuple[BatchEngine, BatchEngine, Checked],
) -> None:
    on, off, checked = engines
    for words in ("the sea", "once upon a time"):
        params = {"a": ("completion", greedy(words, 200))}
        drafted, plain = run(on, params)["a"], run(off, params)["a"]
        assert tokens(drafted) == tokens(plain)
        usage = done(drafted).usage
        # The draft model agrees with the model most of the time, not always.
        assert usage.accepted_prediction_tokens > 2 * usage.rejected_prediction_tokens > 0
    opted_out = GenerateParams(prompt="lo", max_tokens=100, temperature=0, speculative=False)
    requests = {
        "x": ("completion", greedy("once upon a time", 120)),
        "a": ("completion", greedy("the sea", 150)),
        "y": ("chat", GenerateParams(messages=[ChatMessage("user", "hi")], max_tokens=90)),
        "z": ("completion", opted_out),
    }
    drafted, plain = run(on, requests), run(off, requests)
    for rid in "xaz":  # y samples
        assert tokens(drafted[rid]) == tokens(plain[rid]), rid
    assert done(drafted["a"]).usage.accepted_prediction_tokens > 0
    z = done(drafted["z"]).usage
    assert z.accepted_prediction_tokens == z.rejected_prediction_tokens == 0
    assert checked.proposals > 50


@pytest.mark.parametrize("cheap", [True, False])
@pytest.mark.integration
def test_a_cheap_draft_model_reads_a_prompt_in_the_steps_the_model_does(
    draft_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, cheap: bool
) -> None:
    # Whether it reads along is decided at load, on its cost against a step's: a draft
    # model as dear as the model reads a prompt at its first draft instead.
    with monkeypatch.context() as patch:
        patch.setattr(DraftModel, "cost", property(lambda self: 0.0 if cheap else 1.0))
        (on, checked), (off, _) = new_engine(draft_pair, True), new_engine(draft_pair, False)
    assert checked is not None
    try:
        prompts = {"a": "tell me about " + "the sea " * 40, "b": "once upon a time " * 30}
        for rid, words in prompts.items():
            on.add(rid, "completion", greedy(words, 60))
        log = Log(on)
        reading = [on._requests[rid] for rid in prompts]
        while reading:
            log.step()
            # A prompt the model has read, a cheap draft model has read in the same steps.
            for sequence in [s for s in reading if s.next_token is not None]:
                assert len(sequence.prompt) > 80
                held = checked.live.held(sequence.seq_id)
                assert held == (sequence.prompt if cheap else [])
                reading.remove(sequence)
        log.until_idle()
        assert checked.proposals > 5
        # So none of its drafts read more than the step before left behind: for each of
        # the two sequences, its accepted tokens and the next one (8 drafted at most, and
        # 1); a dear one's first draft read the prompt.
        assert (max(checked.caught_up) <= 2 * 9) == cheap
        plain = run(off, {rid: ("completion", greedy(w, 60)) for rid, w in prompts.items()})
        for rid in prompts:
            assert log.text(rid) == tokens(plain[rid])
    finally:
        checked.reference.close()
        on.close()
        off.close()


@pytest.mark.integration
def test_beside_a_draft_model_a_sequence_drafts_from_ngram_lookup_too(
    draft_pair: tuple[Path, Path],
) -> None:
    (on, checked), (off, _) = (
        new_engine(draft_pair, True, drafter=Alternating(8)),
        new_engine(draft_pair, False),
    )
    assert checked is not None
    try:
        for words in ("the sea", "once upon a time"):
            on.add("a", "completion", greedy(words, 200))
            sequence, log = on._requests["a"], Log(on)
            log.until_idle()
            plain = run(off, {"a": ("completion", greedy(words, 200))})["a"]
            assert log.text("a") == tokens(plain)
            model, lookup = sequence.speculation, sequence.lookup
            assert model is not None and lookup is not None
            # Its answer loops, so a matching 4-gram guesses it as the draft model does:
            # both sources drafted, each check counted to its own, and usage counts both.
            assert lookup.accepted > 0 and model.accepted > 0
            usage = log.done("a").usage
            assert usage.accepted_prediction_tokens == lookup.accepted + model.accepted
            assert usage.rejected_prediction_tokens == (
                lookup.drafted + model.drafted - usage.accepted_prediction_tokens
            )
        # The draft model's cells caught up after each stretch of lookup drafts.
        assert checked.proposals > 10
    finally:
        checked.reference.close()
        on.close()
        off.close()


class Flat(StepClock):
    """Steps of any size take a second."""

    def record(self, tokens: int, seconds: float) -> None:
        pass

    def known(self) -> dict[int, float]:
        return {1: 1.0, 512: 1.0}


@contextlib.contextmanager
def on_flat_steps(draft_pair: tuple[Path, Path]) -> Iterator[tuple[BatchEngine, Checked]]:
    """The pair in an engine whose steps of any size take a second (``Flat``), with its
    draft model for 4 slots, checked against a fresh one (``Checked``)."""
    target, draft = draft_pair
    spec = spec_of(target, draft)
    model = LlamaModel(target, spec, threads=1)
    live = load_draft(model, spec, 4, threads=1)
    checked = Checked(live, load_draft(model, msgspec.structs.replace(spec, n_ctx=N_CTX), 1, 1))
    engine = BatchEngine(model, N_CTX, 4, -1, Drafter(8, Flat()), live)
    try:
        yield engine, checked
    finally:
        checked.reference.close()
        engine.close()


@pytest.mark.integration
def test_a_draft_model_too_slow_to_pay_is_not_run(
    draft_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A draft model whose every drafted token costs a second, as much as a step: the plan,
    # which counts that, never asks it, and n-gram lookup still drafts (steps of any size
    # take as long here, so its drafts always pay).
    monkeypatch.setattr(DraftModel, "cost", property(lambda self: 1.0))
    with on_flat_steps(draft_pair) as (engine, checked):
        for words in ("the sea", "once upon a time"):
            usage = done(run(engine, {"a": ("completion", greedy(words, 200))})["a"]).usage
            assert usage.accepted_prediction_tokens > 0
        assert checked.asked == 0


@pytest.mark.integration
def test_a_draft_model_timed_too_dear_at_load_is_timed_again_and_asked(
    draft_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its load timed a token at a second (the machine busy): at that cost, as much as a
    # step here, the plan would never ask it, so drafting would never measure it.
    timing, busy = DraftModel._time_token, iter([1.0])
    monkeypatch.setattr(DraftModel, "_time_token", lambda self: next(busy, 0) or timing(self))
    with on_flat_steps(draft_pair) as (engine, checked):
        assert checked.live.cost == 1.0
        done(run(engine, {"a": ("completion", greedy("the sea", 100))})["a"])
        assert checked.live.cost < 0.1  # timed again as the request came
        assert checked.asked > 0
        assert checked.live._retimes == 0  # drafting measured it: no more timing apart


@pytest.mark.integration
def test_a_draft_model_that_cannot_be_timed_again_fails_no_request(
    draft_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: DraftModel, n: int, outputs: int, slot: int = 0) -> float:
        raise BackendError("the draft model could not decode 1 tokens (code 1)")

    with on_flat_steps(draft_pair) as (engine, checked):
        monkeypatch.setattr(DraftModel, "_time", full)
        items = run(engine, {"a": ("completion", greedy("the sea", 20))})["a"]
        assert len(tokens(items)) == 20
        assert checked.live._retimes == 0  # not tried again


class ModelFirst(Drafter):
    """The plan's own drafts, each from the draft model."""

    def prefer(self, lookup: Candidate, model: Candidate, rows: int) -> Candidate:
        return model


@pytest.mark.parametrize("along", [True, False])
@pytest.mark.integration
def test_a_draft_model_far_behind_a_sequence_drafts_only_where_reading_up_pays(
    draft_pair: tuple[Path, Path], along: bool
) -> None:
    # Steps take a second whatever their size, and the draft model reads a token in a
    # second. One that read the prompt along is behind by what a step leaves (up to nine
    # tokens, in its cost already) at each draft: its drafts pay. One that did not would
    # first read the whole prompt, over 80 seconds spread over the 60 tokens the answer
    # may take: it is never asked, not even to probe.
    target, draft = draft_pair
    spec = spec_of(target, draft)
    model = LlamaModel(target, spec, threads=1)
    live = load_draft(model, spec, 4, threads=1)
    live.read_cost = 1.0
    checked = Checked(live, load_draft(model, msgspec.structs.replace(spec, n_ctx=N_CTX), 1, 1))
    engine = BatchEngine(model, N_CTX, 4, -1, ModelFirst(8, Flat()), live)
    engine._read_along = along
    try:
        prompt = "tell me about " + "the sea " * 40
        done(run(engine, {"a": ("completion", greedy(prompt, 60))})["a"])
        assert (checked.asked > 0) == along
    finally:
        checked.reference.close()
        engine.close()


@pytest.fixture
def lone(draft_pair: tuple[Path, Path]) -> Iterator[DraftModel]:
    """The pair's draft model with two slots, outside any engine."""
    target, draft = draft_pair
    spec = spec_of(target, draft)
    model = LlamaModel(target, spec, threads=1)
    helper = load_draft(model, spec, 2, threads=1)
    yield helper
    helper.close()
    model.close()


CONTEXT = [(7 * i) % 600 + 3 for i in range(200)]


@pytest.mark.integration
def test_reading_along_reads_no_more_than_it_is_given(lone: DraftModel) -> None:
    lone.read([(0, CONTEXT[:150]), (1, CONTEXT)], 120)
    assert lone.held(0) == CONTEXT[:120] and lone.held(1) == []
    lone.read([(0, CONTEXT)], 120)  # it keeps what it shares and reads on
    assert lone.held(0) == CONTEXT
    assert lone.lag(0, [*CONTEXT, 5]) == 1
    assert lone.lag(1, [*CONTEXT, 5]) == 201
    lone.read([(0, [*CONTEXT[:40], 1, 2])], 120)  # a context it parts from at 40
    assert lone.held(0) == [*CONTEXT[:40], 1, 2]
    assert lone.lag(0, [*CONTEXT, 5]) == 161


@pytest.mark.integration
def test_a_draft_that_first_read_a_prompt_is_no_sample_of_the_draft_cost(
    lone: DraftModel,
) -> None:
    at_load = lone.cost
    # Reading 199 tokens to draft one: timing the draft alone would make it look free.
    lone.propose([(0, CONTEXT, 1)])
    assert lone.held(0) == CONTEXT  # it read them all
    assert lone.cost == at_load
    # The next draft reads what a step leaves behind (two tokens), and is a sample.
    lone.propose([(0, [*CONTEXT, 5, 9], 4)])
    assert lone.cost != at_load


@READING
@pytest.mark.integration
def test_a_follow_up_reusing_a_drafted_conversation_is_the_same_as_without_drafts(
    draft_pair: tuple[Path, Path], along: bool
) -> None:
    on, checked = new_engine(draft_pair, True, along=along)
    off, _ = new_engine(draft_pair, False)
    assert checked is not None
    try:
        answers = {}
        for name, engine in (("on", on), ("off", off)):
            history = [ChatMessage("user", "tell me about " + "the sea " * 20)]
            kept = 0
            for turn in range(3):
                params = GenerateParams(messages=history, max_tokens=60 + turn, temperature=0)
                items = run(engine, {"r": ("chat", params)})["r"]
                usage = done(items).usage
                if name == "on":
                    assert usage.rejected_prediction_tokens > 0  # something was rolled back
                assert usage.cached_tokens == kept  # the whole conversation so far
                kept = len(engine._cells.cache.kept()[0])
                history += [ChatMessage("assistant", "".join(tokens(items)))]
                history += [ChatMessage("user", "and?")]
            answers[name] = [m.content for m in history]
        assert answers["on"] == answers["off"]
        assert checked.proposals > 10
    finally:
        checked.reference.close()
        on.close()
        off.close()


@READING
@pytest.mark.integration
def test_a_preempted_sequence_with_a_draft_model_resumes_unchanged(
    draft_pair: tuple[Path, Path], along: bool
) -> None:
    on, checked = new_engine(draft_pair, True, 2, along=along)
    off, _ = new_engine(draft_pair, False, 2)
    assert checked is not None
    try:
        texts = {}
        for name, engine in (("on", on), ("off", off)):
            engine._cells.cache.budget = 0
            log = Log(engine)
            engine.add("a", "completion", greedy("once upon a time", 120), "batch")
            engine.add("b", "completion", greedy("the sea and the sky", 120), "batch")
            for _ in range(10):
                log.step()
            engine.add("chat", "completion", greedy("hello", 30), "interactive")
            log.until_idle()
            assert sum(log.done(rid).preemptions for rid in "ab") == 1
            texts[name] = [log.text(rid) for rid in ("a", "b", "chat")]
        assert texts["on"] == texts["off"]
        assert checked.proposals > 10
    finally:
        checked.reference.close()
        on.close()
        off.close()


@pytest.mark.integration
def test_the_memory_checks_count_the_draft_models_weights_and_cells(
    draft_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    target, draft = draft_pair
    monkeypatch.setenv(MODEL_DIRS_ENV, str(target.parent))
    alone = ModelSpec("t", "t", str(target), n_ctx=N_CTX, n_parallel=4)
    drafted = msgspec.structs.replace(alone, speculative="draft", draft_model=str(draft))
    kind = of_spec(alone)
    need = kind.estimate(target, alone)
    draft_need = kind.estimate(draft, alone)  # its own cells: as many as the model's
    assert Management._estimate(drafted) == need + draft_need
    with pytest.raises(LoadError, match="needs"):
        load_engine(drafted, offer=need + draft_need - 1, threads=1, report=lambda _: None)
    engine = load_engine(drafted, offer=need + draft_need, threads=1, report=lambda _: None)
    engine.close()
