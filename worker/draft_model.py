"""Drafts from a second, smaller model with the target's vocabulary (``speculative:
"draft"``), loaded in the same model process beside the target.

The draft model has a context of its own with one sequence per slot, as many cells per
slot as the target has. Which tokens each of its slots holds is known here only
(``_held``); the target's engine moves its own cells between slots (prefix cache, parking)
without telling. So before each draft, a slot is brought in line with the context of the
sequence that now runs in it, lazily: the cells of the longest common prefix stay, the
rest are removed, and the missing tokens are decoded, batched across sequences,
``n_batch`` tokens a step at most (a sequence still catching up drafts at a later step).
Whatever happened to the target's cells, the draft's are then right. A cheap draft model
(``READ_ALONG``) also reads each prompt in the steps the target reads it (``read``), so
that a sequence's first draft does not read its whole prompt in the middle of its answer.

Then up to ``k`` tokens are drafted greedily for all synced sequences together: one
``llama_decode`` per drafted position, every sequence in it. A sequence's draft stops
where the draft model's top probability falls below ``P_MIN``: a token it is unsure of
is unlikely to come true. The draft is deterministic (the draft model's argmax), so
checking it is the rule ``speculative.py`` documents for a draft that puts all its weight
on one token: greedy answers stay identical, sampled ones keep the target's distribution.

Whether a sequence's draft is worth the draft model's time is ``Drafter.plan``'s call
(``sequence.draft``), on the draft model's cost per drafted token (``cost``: timed at
load, then a decaying average of what its drafts took) and on what it would first read
(``lag`` tokens at ``read_cost`` each, spread over the answer), and the draft model runs
only for the sequences given a draft of its own: beside it, each sequence also looks up
n-grams, and drafts from whichever source it expects more of (``Drafter.prefer``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xb.core.protocol import ModelSpec
from xb.worker.backend import BackendError
from xb.worker.llama_batch import Batch
from xb.worker.llama_model import LlamaModel
from xb.worker.speculative import Speculation

# A drafted token whose probability under the draft model is below this ends the draft:
# llama.cpp's server uses 0.75 (its ``--draft-p-min``), and so does xb (see the README's
# "Speculative decoding" for the measurement).
P_MIN = 0.75
# How often a new sequence's drafted tokens are expected to come true: a draft model that
# shares the model's vocabulary agrees far more often than n-gram lookup (``PRIOR_RATE``);
# at ``P_MIN`` 0.75 the test pairs' drafts came true 70% to 95% of the time.
PRIOR_RATE = 0.7
COST_DECAY = 0.8  # weight of the earlier drafts' cost at each draft that shows it anew
RETIMES = 8  # requests at whose start a cost drafting has not measured yet is timed again
# A draft model whose token costs at most this share of the model's reads each prompt in
# the steps the model reads it (``read``); a dearer one reads it at the sequence's first
# draft. The 512x8 test pair: 0.12, and reading along added 5-8% to the first token's
# time; SmolLM2's Q4_1 file for its f16 copy: 0.70, and it would add 130% (842 to 1,950
# ms for an edit's prompt: the Q4_1 file reads prompts slower than the f16 copy here).
READ_ALONG = 0.25
READ_TIMED = 32  # tokens read at load to time the draft model's reading of a prompt
# The most answer tokens a catch-up's reading is spread over, where the plan weighs it: an
# answer without ``max_tokens`` may take the rest of its context, over which any read
# would look free.
CATCH_UP_SPREAD = 256


@dataclass(frozen=True)
class Vocabulary:
    """What two models must share for one to draft for the other."""

    kind: int  # llama.cpp's vocabulary type (SentencePiece, BPE, ...)
    specials: tuple[tuple[str, int], ...]  # (name, id) of BOS, EOS, EOT
    texts: tuple[bytes, ...]  # every token's text


def vocabulary(model: LlamaModel) -> Vocabulary:
    import llama_cpp

    vocab = model.vocab
    n = int(llama_cpp.llama_vocab_n_tokens(vocab))
    specials = (
        ("BOS", int(llama_cpp.llama_vocab_bos(vocab))),
        ("EOS", int(llama_cpp.llama_vocab_eos(vocab))),
        ("EOT", int(llama_cpp.llama_vocab_eot(vocab))),
    )
    texts = tuple(llama_cpp.llama_vocab_get_text(vocab, i) or b"" for i in range(n))
    return Vocabulary(int(llama_cpp.llama_vocab_type(vocab)), specials, texts)


def difference(draft: Vocabulary, model: Vocabulary) -> str | None:
    """What differs first between the draft model's vocabulary and the model's, or None."""
    intro = "the draft model's vocabulary differs from the model's"
    if draft.kind != model.kind:
        return f"{intro}: its type is {draft.kind} there and {model.kind} here"
    if len(draft.texts) != len(model.texts):
        return f"{intro}: it has {len(draft.texts)} tokens there and {len(model.texts)} here"
    for (name, there), (_, here) in zip(draft.specials, model.specials, strict=True):
        if there != here:
            return f"{intro}: its {name} token is {there} there and {here} here"
    for i, (there_text, here_text) in enumerate(zip(draft.texts, model.texts, strict=True)):
        if there_text != here_text:
            there_s = there_text.decode(errors="replace")
            here_s = here_text.decode(errors="replace")
            return f"{intro}: token {i} is {there_s!r} there and {here_s!r} here"
    return None


def shared(held: list[int], context: list[int], most: int) -> int:
    """How many of their first ``most`` tokens ``held`` and ``context`` share. Compared a
    slice at a time, at every step: where they part is near the end as a rule (a draft's
    rejected tokens), and a loop over a few thousand tokens would cost a 512x8 step's 10%."""
    n = max(min(len(held), len(context), most), 0)
    if held[:n] == context[:n]:
        return n
    stride = 16  # back from the end, doubling, to a prefix they share
    while stride < n and held[: n - stride] != context[: n - stride]:
        stride *= 2
    keep = max(n - stride, 0)
    while held[keep] == context[keep]:  # they part before ``n``
        keep += 1
    return keep


class DraftModel:
    """The draft model's weights and context, and what each of its slots holds."""

    @staticmethod
    def speculation() -> Speculation:
        """A new sequence's drafting, expected to come true at ``PRIOR_RATE`` at first."""
        return Speculation.expecting(PRIOR_RATE)

    def __init__(self, model: LlamaModel, target: LlamaModel, n_ctx: int, slots: int) -> None:
        import llama_cpp

        self._llama = llama_cpp
        native = model.llm._model.model
        if llama_cpp.llama_model_is_recurrent(native) or llama_cpp.llama_model_is_hybrid(native):
            raise BackendError(
                "the draft model keeps a recurrent state, whose rejected drafts cannot be "
                "rolled back; choose a transformer draft model"
            )
        differs = difference(vocabulary(model), vocabulary(target))
        if differs is not None:
            raise BackendError(f"{differs}; choose a draft model of the model's own family")
        self._model = model
        self.n_vocab = model.n_vocab
        self._n_batch = model.n_batch
        self._ctx = model.new_context(n_ctx * slots, slots)
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = Batch(model.n_batch)
        self._held: list[list[int]] = [[] for _ in range(slots)]
        self._caught_up = 0  # tokens the last catch-up read
        self._retimes = RETIMES  # left, while drafting has not measured the cost (``retime``)
        # Decayed seconds spent drafting and tokens drafted: one token's decode at first.
        try:
            self._seconds, self._drafted = self._time_token(), 1.0
            self.read_cost = self._time_read()
        except BaseException:
            self._batch.free()
            llama_cpp.llama_free(self._ctx)
            raise

    @property
    def cost(self) -> float:
        """Seconds a drafted token is expected to cost."""
        return self._seconds / self._drafted

    def _time_token(self) -> float:
        """Seconds to decode one token (its logits wanted)."""
        return self._time(1, 1)

    def _time_read(self) -> float:
        """Seconds to read a token of a prompt, in a chunk of ``READ_TIMED``."""
        n = min(READ_TIMED, self._n_batch)
        return self._time(n, 0) / n

    def retime(self) -> None:
        """Time a token again, in a slot that holds nothing, and keep the faster time, as
        long as drafting has not measured the cost (``RETIMES`` times at most). A load on
        a busy machine may time it too dear, and the plan never asks a draft model whose
        cost it thinks too dear, so drafting would never measure it (the step clock's
        sizes had the same trap: ``speculative.Drafter.plan``)."""
        free = next((slot for slot, held in enumerate(self._held) if not held), None)
        if not self._retimes or free is None:
            return
        self._retimes -= 1
        try:
            seconds = self._time(1, 1, free)
        except BackendError:  # no cells for it: a request must not fail for a timing
            self._retimes = 0
            return
        self._seconds, self._drafted = min(self.cost, seconds), 1.0

    def _time(self, n: int, outputs: int, slot: int = 0) -> float:
        """Seconds to decode ``n`` tokens, the last ``outputs`` with logits, in ``slot``
        (which holds nothing; removed after): the faster of two, as the first
        allocates."""
        times = []
        for _ in range(2):
            self._batch.clear()
            self._batch.add([max(self._model.bos, 0)] * n, slot, 0, outputs)
            started = time.perf_counter()
            code = self._batch.decode(self._ctx)
            times.append(time.perf_counter() - started)
            self._llama.llama_memory_seq_rm(self._memory, slot, 0, -1)
            if code != 0:
                raise BackendError(f"the draft model could not decode {n} tokens (code {code})")
        return min(times)

    def lag(self, slot: int, context: list[int]) -> int:
        """The tokens a draft after ``context`` in ``slot`` would read before drafting."""
        return len(context) - shared(self._held[slot], context, len(context) - 1)

    def held(self, slot: int) -> list[int]:
        """The tokens whose cells the draft model's slot holds."""
        return list(self._held[slot])

    def propose(
        self, wanted: list[tuple[int, list[int], int]], timed: bool = True
    ) -> list[list[int]]:
        """For each ``(slot, context, k)``: up to ``k`` tokens the draft model expects
        after ``context`` (its last token not decoded by the target yet); [] for a
        sequence whose slot is still catching up, or where ``k`` is 0. Its time is a
        sample of ``cost`` where ``timed`` (and it read little first, below)."""
        drafts: list[list[int]] = [[] for _ in wanted]
        started = time.perf_counter()
        rows = self._catch_up(wanted)
        # Reading a new prompt (or what n-gram drafts gave meanwhile) is no cost of drafting:
        # the plan weighs it apart (``lag`` at ``read_cost``). A call that read more than a
        # step of drafting leaves behind (the accepted tokens, the next) is not a sample of
        # the cost. Timing only its drafting would count the tokens that reading gave
        # logits for as free (one SmolLM2 probe took the cost from 9.5 to 4.5 ms a token).
        sample = timed and sum(k + 1 for _, _, k in wanted if k > 0) >= self._caught_up
        try:
            self._draft(wanted, rows, drafts)
        finally:
            # Per drafted token (a draft of none counts one): a draft that stops short of
            # what was asked makes fewer tokens, and costs fewer decodes, alike.
            drafted = sum(max(len(drafts[i]), 1) for i in rows)
            if drafted and sample:
                self._seconds = self._seconds * COST_DECAY + time.perf_counter() - started
                self._drafted = self._drafted * COST_DECAY + drafted
                self._retimes = 0
        return drafts

    def read(self, chunks: list[tuple[int, list[int]]], most: int) -> None:
        """Read prompt chunks in the step the model reads them: each ``(slot, context)`` is
        what a sequence's cells hold once its chunk is read, and its slot then holds it too
        (``most`` tokens in all at most, as the model's chunks: a slot that is further
        behind, whose sequence's cells the model found cached, catches up at its first
        draft). So a sequence's first draft reads a token or two, not its whole prompt in
        the middle of its answer, with every sequence of that step waiting."""
        self._batch.clear()
        for slot, context in chunks:
            self._queue(slot, context, min(most, self._n_batch), last=False)
        if self._batch.n:
            self._decode()

    def _catch_up(self, wanted: list[tuple[int, list[int], int]]) -> dict[int, int]:
        """Bring the slots in line with the contexts, ``n_batch`` tokens at most; which
        batch row holds the logits after each context that is read whole."""
        rows: dict[int, int] = {}  # wanted index -> batch index of its logits
        self._batch.clear()
        for i, (slot, context, k) in enumerate(wanted):
            if k > 0 and context and self._queue(slot, context, self._n_batch):
                rows[i] = self._batch.n - 1
        self._caught_up = self._batch.n
        return rows if self._batch.n and self._decode() else {}

    def _queue(self, slot: int, context: list[int], most: int, last: bool = True) -> bool:
        """Bring the slot in line with ``context`` (``_sync``) and add what it lacks to the
        batch, until the batch holds ``most`` tokens; True when that reads the rest of
        ``context``, its last token with logits where ``last``."""
        start = self._sync(slot, context, last)
        take = context[start : start + most - self._batch.n]
        if not take:
            return False
        whole = start + len(take) == len(context)
        self._batch.add(take, slot, start, 1 if whole and last else 0)
        self._held[slot] += take
        return whole

    def _draft(
        self,
        wanted: list[tuple[int, list[int], int]],
        rows: dict[int, int],
        drafts: list[list[int]],
    ) -> None:
        """Greedy drafts from the logits in ``rows``, one decode per drafted position."""
        while rows:
            following: dict[int, int] = {}
            self._batch.clear()
            for i, row in rows.items():
                slot, _, k = wanted[i]
                token, p = self._top(row)
                if p < P_MIN:
                    continue
                drafts[i].append(token)
                if len(drafts[i]) < k:
                    following[i] = self._batch.n
                    self._batch.add([token], slot, len(self._held[slot]), 1)
                    self._held[slot].append(token)
            if not following or not self._decode():
                break
            rows = following

    def _sync(self, slot: int, context: list[int], last: bool = True) -> int:
        """Cut the slot's cells back to what it shares with ``context``, but for its last
        token where ``last`` (decoded again, its logits give the first draft); the cells
        it keeps."""
        held = self._held[slot]
        keep = shared(held, context, len(context) - 1 if last else len(context))
        if keep < len(held):
            if not self._llama.llama_memory_seq_rm(self._memory, slot, keep, -1):
                self._llama.llama_memory_seq_rm(self._memory, slot, 0, -1)
                keep = 0
            del held[keep:]
        return keep

    def _decode(self) -> bool:
        """Decode the batch; on failure every slot is cleared, so that no slot's cells
        differ from what ``_held`` says."""
        if self._batch.decode(self._ctx) == 0:
            return True
        self._llama.llama_memory_clear(self._memory, True)
        for held in self._held:
            held.clear()
        return False

    def _top(self, row: int) -> tuple[int, float]:
        """The draft model's most likely token at batch row ``row``, and its probability."""
        pointer = self._llama.llama_get_logits_ith(self._ctx, row)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        token = int(np.argmax(logits))
        top = float(logits[token])
        return token, 1.0 / float(np.exp(logits - top).sum())

    def set_threads(self, threads: int) -> None:
        self._llama.llama_set_n_threads(self._ctx, threads, threads)

    def close(self) -> None:
        self._batch.free()
        self._llama.llama_free(self._ctx)
        self._model.close()


def load_draft(target: LlamaModel, spec: ModelSpec, slots: int, threads: int) -> DraftModel:
    """The draft model ``spec.draft_model`` names (a resolved path) beside ``target``, on
    the same devices; ``BackendError`` when it cannot draft for it."""
    assert spec.draft_model is not None
    own = ModelSpec(
        spec.model_uid,
        "draft",
        spec.draft_model,
        n_ctx=spec.n_ctx,
        n_gpu_layers=spec.n_gpu_layers,
        engine_kwargs=f'{{"n_batch": {target.n_batch}}}',
    )
    model = LlamaModel(Path(spec.draft_model), own, threads)
    try:
        return DraftModel(model, target, spec.n_ctx, slots)
    except BaseException:
        model.close()
        raise
