"""Continuous batching on llama.cpp: many sequences decoded together, one batch per step.

Each step is one ``llama_decode`` of a batch holding the next token of every generating
sequence plus a bounded chunk of any prompt still being read (chunked prefill: while
others generate, a prompt joins ``PREFILL_CHUNK`` tokens at a time, so a long prompt never
freezes them). Sequences join and leave at any step.

Each of the ``n_parallel`` slots is a llama.cpp sequence with ``n_ctx`` KV cells of its own
(no ``kv_unified``): attention then reads only a sequence's own cells, where a shared pool
makes every token attend over every cell that any sequence, running or cached, holds (on
the 512x8 test model eight cached 1,000-token conversations cut one stream from 576 to 70
tokens per second without flash attention, 427 with it; per-slot cells: 484 to 576).
A sequence that leaves its slot keeps its cells there, whether it finished or was
cancelled (its client went away): the prefix cache. ``cells.py`` moves the cells; this
module decides who runs and what each step decodes.

Requests are ``interactive`` or ``batch``, and each has a tenant; ``admission.py`` decides
the order they wait in and whom a waiting one preempts. A preempted sequence's cells are
parked (``parking.py``) and it resumes from them where it stopped when a slot frees.

A generating sequence's row may carry a draft after its next token (speculative decoding,
``speculative.py``; proposed by n-gram lookup or by a draft model, ``draft_model.py``): the
tokens the model agrees with are kept, the rest of the cells cut.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque
from pathlib import Path

from xb.core.protocol import GenerateParams, ModelSpec, Priority
from xb.worker.admission import enqueue, victim
from xb.worker.answer import Answer
from xb.worker.backend import BackendError, Piece, token_budget
from xb.worker.cells import Cells
from xb.worker.draft_model import READ_ALONG, DraftModel, load_draft
from xb.worker.engine import Engine, Event, Failed, SequentialEngine
from xb.worker.llama_batch import Batch
from xb.worker.llama_echo import SCORE_CHUNK, Echo, prompt_texts, scored_pieces
from xb.worker.llama_model import LlamaModel
from xb.worker.llama_sampling import Sampler
from xb.worker.prefix_cache import STASH_MIN
from xb.worker.sequence import Row, Sequence, draft
from xb.worker.speculative import Drafter, Speculation, verify
from xb.worker.threads import ThreadTuner

log = logging.getLogger("xb.model")

# Prompt tokens a step may read while other sequences generate: a 128-token chunk pauses
# them for 30-40 ms on two cores where a whole 512-token batch pauses them a quarter of a
# second; smaller chunks cost throughput (mixed requests on 4 slots: 1.57x one slot's
# throughput with 128, 1.47x with 64).
PREFILL_CHUNK = int(os.environ.get("XB_PREFILL_CHUNK", "128"))


def slot_count(model: LlamaModel, n_parallel: int) -> int:
    """The sequences a replica decodes together: as many as asked, as llama.cpp allows."""
    import llama_cpp

    most = int(llama_cpp.llama_max_parallel_sequences())
    return max(1, min(n_parallel, model.n_batch, most))


class BatchEngine(Engine):
    def __init__(
        self,
        model: LlamaModel,
        n_ctx: int,
        n_parallel: int,
        cache_tokens: int = -1,
        drafter: Drafter | None = None,
        draft_model: DraftModel | None = None,
    ) -> None:
        import llama_cpp

        self._llama = llama_cpp
        self._model = model
        self.abilities = model.abilities
        self.slots = slot_count(model, n_parallel)
        self._n_ctx = n_ctx
        pool = n_ctx * self.slots
        self._ctx = model.new_context(pool, self.slots)
        self._batch = Batch(model.n_batch)
        self._cells = Cells(
            model, self._ctx, self.slots, pool if cache_tokens < 0 else cache_tokens
        )
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []  # in the order they joined
        self._requests: dict[str, Sequence] = {}
        self._early: list[Event] = []  # answers that need no decoding
        self._tuner = ThreadTuner(model.threads if model.tuned else 1, self._set_threads)
        # Drafts are rolled back by cutting cells: a recurrent state cannot be cut.
        native = model.llm._model.model
        whole = llama_cpp.llama_model_is_recurrent(native) or llama_cpp.llama_model_is_hybrid(
            native
        )
        self._drafter = None if whole else drafter
        self._draft_model = draft_model  # proposes drafts beside n-gram lookup
        # Step times are the model's alone; a draft model's time is its own ``cost``.
        if self._drafter is not None:
            self._drafter.clock.calibrate(self._time_step, min(model.n_batch, n_ctx))
        # A cheap draft model reads prompts along with the model (``READ_ALONG``).
        self._read_along = False
        if draft_model is not None and self._drafter is not None:
            step = self._drafter.clock.known().get(1)
            self._read_along = step is not None and draft_model.cost <= READ_ALONG * step

    # ---- requests ---------------------------------------------------------------------

    def add(
        self,
        request_id: str,
        kind: str,
        params: GenerateParams,
        priority: Priority = "interactive",
        tenant: str = "",
    ) -> None:
        if kind == "embedding":
            raise BackendError(
                "this model was not launched for embeddings; launch it with model_type 'embedding'"
            )
        tokens, template_stop, text = self._model.prompt_tokens(kind, params)
        if not tokens:  # an empty prompt, for a model that adds no BOS: nothing to decode
            if self._model.bos < 0:
                raise BackendError("the prompt is empty; give the model some text to go on")
            tokens = [self._model.bos]  # what llama-cpp-python's completions do
        if text is not None:
            tokens = self._cells.continued(tokens, text)
        limit = token_budget(len(tokens), self._n_ctx, params.max_tokens)
        too_big = [i for i in params.logit_bias if not 0 <= i < self._model.n_vocab]
        if too_big:
            raise BackendError(
                f"logit_bias names token {too_big[0]}; this model's vocabulary has "
                f"{self._model.n_vocab} tokens"
            )
        choice = params.tool_choice if params.tools else "none"
        grammar = self._model.grammar(params, calls=choice not in ("none", "auto"))
        echo = None
        if params.echo and params.logprobs:
            texts, start = prompt_texts(self._model, tokens, params.prompt or "")
            echo = Echo(texts, start, params.top_logprobs)
        drafts = self._draft_model.speculation if self._draft_model else Speculation
        drafting = self._drafter is not None and params.speculative and not echo
        sequence = Sequence(  # the sampler last: nothing may raise once it exists
            request_id,
            tokens,
            limit,
            Sampler(self._model, params, grammar),
            Answer(template_stop + self._model.stop + params.stop, params.tools, choice),
            params.top_logprobs if params.logprobs else None,
            echo=echo,
            text=text,
            priority=priority,
            tenant=tenant,
            speculation=drafts() if drafting else None,
            lookup=Speculation() if drafting and self._draft_model else None,
        )
        self._requests[request_id] = sequence
        if params.echo and echo is None:
            self._early.append((request_id, Piece(params.prompt or "")))
        if limit <= 0 and echo is None:
            self._early.append((request_id, sequence.answer.done("length", sequence.usage)))
            self._requests.pop(request_id)
            sequence.sampler.close()
            return
        if sequence.lookup is not None and self._draft_model is not None:
            self._draft_model.retime()
        enqueue(self._waiting, sequence)

    def cancel(self, request_id: str) -> bool:
        """End a request at once; what it read and generated stays cached, as a finished
        answer's does (a stopped stream's follow-up quotes the part its client got)."""
        sequence = self._requests.get(request_id)
        if sequence is None:
            return False
        if sequence in self._waiting:
            self._waiting.remove(sequence)
            self._requests.pop(request_id)
            sequence.sampler.close()
        else:
            self._leave(sequence)
        return True

    @property
    def busy(self) -> bool:
        return bool(self._running or self._waiting or self._early)

    @property
    def cached_tokens(self) -> int:
        return self._cells.cache.tokens

    def share(self, threads: int) -> None:
        if self._model.tuned:  # threads the launch named stay as they are
            self._tuner.share(threads)

    def _preempt(self, head: Sequence) -> bool:
        """Every slot is busy and ``head`` waits: a running sequence (``admission.victim``)
        leaves its slot for it, its cells parked. False when none may, or when a slot frees
        after this step anyway (a closing sequence's)."""
        if any(s.closing for s in self._running):
            return False
        sequence = victim(head, self._running)
        if sequence is None or not self._cells.park(sequence):
            return False
        self._running.remove(sequence)
        sequence.preemptions += 1
        enqueue(self._waiting, sequence, ahead=True)
        log.debug("request %s preempted (%d cells parked)", sequence.request_id, len(sequence.kv))
        return True

    def _leave(self, sequence: Sequence) -> None:
        """A running sequence leaves its slot, finished or cancelled; its cells stay."""
        self._running.remove(sequence)
        self._requests.pop(sequence.request_id, None)
        sequence.sampler.close()
        self._cells.keep(sequence)

    # ---- steps ------------------------------------------------------------------------

    def step(self) -> list[Event]:
        events, self._early = self._early, []
        while self._waiting:
            head = self._waiting[0]
            full = len(self._running) >= self.slots
            if full and not self._preempt(head):
                break
            if self._continues_closing(head):
                break
            sequence = self._waiting.popleft()
            if not self._cells.place(sequence):
                events.append((sequence.request_id, Failed("could not resume", invalid=False)))
                self._requests.pop(sequence.request_id, None)
                sequence.sampler.close()
                continue
            self._running.append(sequence)
        if not self._running:
            return events
        rows = self._plan()
        if self._read_along:
            self._read_prompts(rows)
        code = self._decode(rows)
        if code != 0:  # every slot has room for a whole context: not for want of cells
            self._fail_all(events, f"llama.cpp could not decode (code {code})")
            return events
        index = 0  # of each row's first token in the batch
        for row in rows:
            start = len(row.sequence.kv)
            try:
                self._advance(row, start, index, events)
            except Exception as exc:  # one request's bad luck must not end the others
                log.exception("request %s failed", row.sequence.request_id)
                self._abandon(row.sequence, events, f"generation failed: {exc}")
            index += len(row.tokens)
        return events

    def _read_prompts(self, rows: list[Row]) -> None:
        """A cheap draft model reads the prompt chunks of the step's sequences that draft:
        as many tokens as the model reads, or a whole batch where none is waiting on it."""
        assert self._draft_model is not None
        reading = [row for row in rows if row.sequence.next_token is None]
        alone = len(reading) == len(rows)
        self._draft_model.read(
            [
                (row.sequence.seq_id, row.sequence.kv + row.tokens)
                for row in reading
                if row.sequence.speculation is not None
            ],
            self._model.n_batch if alone else sum(len(row.tokens) for row in reading),
        )

    def _continues_closing(self, sequence: Sequence) -> bool:
        """A follow-up that came while the answer it continues is in its closing step waits
        that one step: then the answer's cells are complete and cached for it to reuse."""
        head = sequence.prompt[:STASH_MIN]
        return any(s.closing and s.kv[: len(head)] == head for s in self._running)

    def _advance(self, row: Row, start: int, index: int, events: list[Event]) -> None:
        """What a decoded row gives: scored prompt tokens, the next token, or the end."""
        sequence = row.sequence
        sequence.kv += row.tokens
        sequence.next_token = None
        if row.score:
            assert sequence.echo is not None
            read, echo = range(start, start + len(row.tokens)), sequence.echo
            pieces = scored_pieces(
                self._model, sequence.sampler, self._ctx, echo, sequence.prompt, read, index
            )
            events += [(sequence.request_id, piece) for piece in pieces]
        if sequence.closing:
            self._leave(sequence)
        if not row.sample:
            return
        if sequence.produced >= sequence.limit:  # max_tokens 0: the prompt was scored
            self._finish(sequence, "length", events)
        elif row.drafts:
            self._verify(row, start, index, events)
        else:
            self._sample(sequence, index + len(row.tokens) - 1, events)

    def _verify(self, row: Row, start: int, index: int, events: list[Event]) -> None:
        """A drafted row: the model's own token at each position, the draft's cells kept
        as far as it agreed with them, and the rest rolled back."""
        sequence, draft, source = row.sequence, row.drafts, row.source
        assert source is not None
        sampler, room = sequence.sampler, sequence.limit - sequence.produced
        chosen = verify(
            lambda i: sampler.sample(self._ctx, index + i), draft, self._model.ends_turn, room
        )
        agreed = sum(1 for a, b in zip(chosen, draft, strict=False) if a == b)
        source.record(len(draft), agreed)
        self._cells.cut(sequence, start + 1 + agreed)
        for i, token in enumerate(chosen):
            if not self._take(
                sequence, token, index + i, events, start + 1 + i if i < agreed else None
            ):
                return

    def _abandon(self, sequence: Sequence, events: list[Event], reason: str) -> None:
        """End a running sequence with an error, leaving nothing of it behind."""
        if sequence not in self._running:
            return
        if not sequence.closing:
            events.append((sequence.request_id, Failed(reason, invalid=False)))
        self._running.remove(sequence)
        self._requests.pop(sequence.request_id, None)
        self._cells.drop(sequence)
        sequence.sampler.close()

    def _plan(self) -> list[Row]:
        """This step's rows: the next token of each generating sequence, then prompt chunks."""
        rows = [
            Row(s, [s.next_token], not s.closing) for s in self._running if s.next_token is not None
        ]
        if self._drafter is not None:
            # A draft model run on the thread count the last step tried is no sample of its
            # cost, as that step was none of the step clock's.
            timed = not self._tuner.trying
            draft(rows, self._drafter, self._model.n_batch, self._draft_model, timed)
        budget = self._model.n_batch - sum(len(row.tokens) for row in rows)
        if rows:
            budget = min(budget, PREFILL_CHUNK)
        for sequence in self._running:
            start = len(sequence.kv)
            if sequence.next_token is not None or budget <= 0 or start >= len(sequence.prompt):
                continue
            take = budget if sequence.echo is None else min(budget, SCORE_CHUNK)
            chunk = sequence.prompt[start : start + take]
            budget -= len(chunk)
            last = start + len(chunk) == len(sequence.prompt)
            rows.append(Row(sequence, chunk, last, score=sequence.echo is not None))
        # llama.cpp splits a batch by sequence; rows in sequence order split cheapest.
        return sorted(rows, key=lambda row: row.sequence.seq_id)

    def _set_threads(self, threads: int) -> None:
        self._llama.llama_set_n_threads(self._ctx, threads, threads)
        if self._draft_model is not None:
            self._draft_model.set_threads(threads)

    def _decode(self, rows: list[Row]) -> int:
        batch = self._batch
        batch.clear()
        for row in rows:
            outputs = len(row.tokens) if row.score else (1 + len(row.drafts)) * row.sample
            batch.add(row.tokens, row.sequence.seq_id, len(row.sequence.kv), outputs)
        n, alike = batch.n, not any(row.drafts for row in rows)
        self._tuner.before(n, alike)
        started = time.perf_counter()
        code = batch.decode(self._ctx)
        seconds = time.perf_counter() - started
        self._tuner.after(n, seconds, alike)
        # The clock times steps of one part: generating rows alone, all of one length, on
        # the threads steps of their size use (a step that tries the other count is no
        # sample: SmolLM2 took 28 ms for a token on one thread, 17 on two, and three such
        # steps among the five a size keeps made every step look 1.6 times dearer).
        one_part = len({len(row.tokens) for row in rows}) == 1
        generating = all(row.sequence.next_token is not None for row in rows)
        if self._drafter is not None and one_part and generating and not self._tuner.trying:
            self._drafter.clock.record(n, seconds)
        return code

    def _time_step(self, n: int) -> float:
        """Seconds to decode ``n`` tokens with every position's logits, as a draft's
        check does, in slot 0's cells (before the first request; removed after)."""
        self._batch.clear()
        self._batch.add([max(self._model.bos, 0)] * n, 0, 0, n)
        started = time.perf_counter()
        code = self._batch.decode(self._ctx)
        seconds = time.perf_counter() - started
        self._cells.clear(0)
        if code != 0:
            raise BackendError(f"llama.cpp could not decode {n} tokens (code {code})")
        return seconds

    def _fail_all(self, events: list[Event], reason: str) -> None:
        log.error("%s; ending %d requests", reason, len(self._running))
        for sequence in list(self._running):
            self._abandon(sequence, events, reason)

    def _sample(self, sequence: Sequence, row: int, events: list[Event]) -> None:
        self._take(sequence, sequence.sampler.sample(self._ctx, row), row, events)

    def _take(
        self, sequence: Sequence, token: int, row: int, events: list[Event], cell: int | None = None
    ) -> bool:
        """A token sampled from batch row ``row``: sent, and decoded at the next step, or
        already in ``cell`` (a draft that came true). False when it ends the answer."""
        if self._model.ends_turn(token):
            self._cells.cut(sequence, cell)
            self._finish(sequence, "stop", events)
            return False
        sequence.produced += 1
        text = sequence.answer.feed(self._model.piece(token))
        logprob = None
        if sequence.top_logprobs is not None:
            logprobs = sequence.sampler.log_softmax(self._ctx, row)
            logprob = sequence.sampler.logprob(logprobs, token, sequence.top_logprobs)
        events.append((sequence.request_id, Piece(text, logprob)))
        if sequence.answer.stopped:
            self._cells.cut(sequence, cell)
            self._finish(sequence, "stop", events)
        elif sequence.produced >= sequence.limit:
            self._finish(sequence, "length", events, last=token if cell is None else None)
        elif cell is None:
            sequence.next_token = token
        return not sequence.answer.stopped and sequence.produced < sequence.limit

    def _finish(
        self, sequence: Sequence, reason: str, events: list[Event], last: int | None = None
    ) -> None:
        """The answer is done. A chat cut off at its length keeps its slot one more step,
        to decode its last token: then its cells hold the whole answer, and a follow-up
        that quotes it finds all of it in the cache."""
        done = sequence.answer.done(reason, sequence.usage)
        if sequence.preemptions:
            done = dataclasses.replace(done, preemptions=sequence.preemptions)
        events.append((sequence.request_id, done))
        if last is None or sequence.text is None or not self._cells.cache.budget:
            self._leave(sequence)
            return
        self._requests.pop(sequence.request_id, None)
        sequence.closing, sequence.next_token = True, last

    def close(self) -> None:
        for sequence in [*self._running, *self._waiting]:
            sequence.sampler.close()
        self._batch.free()
        self._llama.llama_free(self._ctx)
        if self._draft_model is not None:
            self._draft_model.close()
        self._model.close()


def start(path: Path, spec: ModelSpec, threads: int) -> Engine:
    """llama.cpp's entry in ``xb.core.engines``: chat models batched, embedding models one
    request at a time (a request embeds all its inputs together)."""
    if spec.model_type == "embedding":
        from xb.worker.llama_embed import LlamaEmbedder

        return SequentialEngine(LlamaEmbedder(path, spec, threads))
    model = LlamaModel(path, spec, threads)
    drafter = Drafter(spec.draft_tokens) if spec.speculative in ("ngram", "draft") else None
    helper = None
    try:
        if spec.speculative == "draft":
            helper = load_draft(model, spec, slot_count(model, spec.n_parallel), threads)
        return BatchEngine(
            model, spec.n_ctx, spec.n_parallel, spec.prefix_cache_tokens, drafter, helper
        )
    except BaseException:
        if helper is not None:
            helper.close()
        model.close()
        raise
