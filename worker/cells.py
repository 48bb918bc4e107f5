"""The KV cells of a batch engine's slots: which slot a sequence takes, what it finds
there, what stays when it leaves, and what is rolled back or parked.

Each slot is a llama.cpp sequence with ``n_ctx`` cells of its own. A sequence that joins
takes the slot the prefix cache (``prefix_cache.py``) gives it, with the longest cached
prefix of its prompt copied in; a preempted one gets its parked cells back
(``parking.py``). A sequence that leaves keeps its prompt and answer in its slot, whether
it finished or was cancelled, as far as the cache's budget allows; a chat's cells come with
a ``Transcript`` (what they hold, as text), so that a follow-up quoting the answer reuses
them. Drafts that did not come true are cut from the slot (``cut``). The engine decides
who runs; this module only moves cells.
"""

from __future__ import annotations

import logging
from typing import Any

from xb.worker.llama_model import LlamaModel
from xb.worker.parking import park, restore
from xb.worker.prefix_cache import PrefixCache, Transcript
from xb.worker.sequence import Sequence

log = logging.getLogger("xb.model")


class Cells:
    def __init__(self, model: LlamaModel, ctx: Any, slots: int, budget: int) -> None:
        import llama_cpp

        self._llama = llama_cpp
        self._model = model
        self._ctx = ctx
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.cache = PrefixCache(slots, budget)
        self._transcripts: dict[int, Transcript] = {}  # the chats idle slots' cells hold

    def continued(self, tokens: list[int], text: str) -> list[int]:
        """A chat's tokens, continuing the chat an idle slot holds that it quotes furthest,
        if any: that chat's tokens as they were, then the rest's."""
        kept = self.cache.kept()
        rest_len = len(text)
        for slot, transcript in self._transcripts.items():
            quote = transcript.quoted(text) if slot in kept else None
            if quote is None or len(quote[1]) >= rest_len:
                continue
            spliced = self._model.continued(*quote)
            if spliced is not None:
                tokens, rest_len = spliced, len(quote[1])
        return tokens

    def clear(self, seq_id: int, start: int = 0) -> bool:
        """Drop a slot's cells from ``start`` on; False when the model's memory cannot
        cut there (a recurrent state, say), and then nothing was dropped."""
        self._transcripts.pop(seq_id, None)
        return bool(self._llama.llama_memory_seq_rm(self.memory, seq_id, start, -1))

    def place(self, sequence: Sequence) -> bool:
        """Give a joining sequence a slot, with the longest cached prefix of its prompt,
        or a preempted one its parked cells; False when those cannot be put back."""
        # An echo wants every position's logits: nothing of it may come from the cache.
        fresh = sequence.parked is None and sequence.echo is None
        claim = self.cache.claim(sequence.prompt if fresh else [])
        slot = claim.slot
        if claim.stash is not None:  # what the slot kept moves aside, still cached
            self.clear(claim.stash)
            self._llama.llama_memory_seq_cp(self.memory, slot, claim.stash, -1, -1)
            transcript = self._transcripts.pop(slot, None)
            if transcript is not None:
                self._transcripts[claim.stash] = transcript
        if sequence.parked is not None:
            self.clear(slot)
            resumed = restore(self._llama, self._ctx, sequence.parked, slot)
            sequence.seq_id, sequence.parked = slot, None
            if not resumed:
                log.error("request %s: its parked cells did not go back", sequence.request_id)
                self.drop(sequence)
            return resumed
        if claim.source is not None:  # the longest prefix is elsewhere: copy it here
            self.clear(slot)
            self._llama.llama_memory_seq_cp(self.memory, claim.source, slot, -1, -1)
        reuse = max(min(claim.shared, len(sequence.prompt) - 1), 0)  # one to decode, at least
        # Recurrent and hybrid models keep a state that cannot be cut at a position, and a
        # sliding window may have lost the prefix's first cells: then read it all again.
        kept_whole = self._llama.llama_memory_seq_pos_min(self.memory, slot) <= 0
        if reuse and not (self.clear(slot, reuse) and kept_whole):
            reuse = 0
        if not reuse:
            self.clear(slot)
        sequence.seq_id = slot
        sequence.kv = sequence.prompt[:reuse]
        sequence.cached = reuse
        return True

    def park(self, sequence: Sequence) -> bool:
        """Copy a running sequence's cells out and free its slot (preemption); False when
        llama.cpp cannot save them, and then nothing changed."""
        parked = park(self._llama, self._ctx, sequence.seq_id)
        if parked is None:
            return False
        self.clear(sequence.seq_id)
        self.cache.release(sequence.seq_id, [])
        sequence.parked = parked
        return True

    def keep(self, sequence: Sequence) -> None:
        """A sequence leaves its slot: its cells, prompt and answer so far, stay there if
        the budget allows, a chat's with its transcript."""
        transcript = self._transcript(sequence)
        if transcript is not None:
            self._transcripts[sequence.seq_id] = transcript
        for slot in self.cache.release(sequence.seq_id, sequence.kv):
            self.clear(slot)

    def drop(self, sequence: Sequence) -> None:
        """A sequence that failed leaves nothing behind: its cells may be wrong."""
        self.clear(sequence.seq_id)
        self.cache.release(sequence.seq_id, [])

    def cut(self, sequence: Sequence, cell: int | None) -> None:
        """Roll a sequence's cells back to the first ``cell`` (None: nothing to roll back)."""
        if cell is not None and cell < len(sequence.kv):
            del sequence.kv[cell:]
            self._llama.llama_memory_seq_rm(self.memory, sequence.seq_id, cell, -1)

    def _transcript(self, sequence: Sequence) -> Transcript | None:
        """What a chat's cells hold, for a follow-up to quote: its prompt, then every token
        it generated, the last sampled (and sent) one among them even if not yet decoded."""
        if sequence.text is None:
            return None
        answer = sequence.kv[len(sequence.prompt) :]
        if sequence.next_token is not None and not sequence.closing:
            answer = [*answer, sequence.next_token]
        pieces = [self._model.piece(t) for t in answer]
        return Transcript(sequence.text, sequence.prompt, answer, pieces)
