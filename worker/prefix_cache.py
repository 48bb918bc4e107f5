"""The prefix cache's bookkeeping: which slot a joining sequence takes, where its prompt's
longest cached prefix is, and what idle slots keep. It only counts; the engine moves cells.

Each slot is one llama.cpp sequence with cells of its own. llama.cpp attends over the
range of sequence ids a batch holds, not only the ids in it, so running sequences are
kept in the lowest slots: four streams in slots 0, 5, 10 and 15 decode twice as slowly as
in slots 0 to 3 (the 512x8 test model, one thread). So a joining sequence always takes
the lowest idle slot. If another idle slot holds the longest prefix of its prompt, those
cells are copied into it (llama.cpp copies a slot's whole buffer at the next decode: 2.6 ms
for the 512x8 test model's 2,048 cells, against 450 ms to read 1,000 tokens again); what
the taken slot kept, if it is more than a few tokens, is first moved to the least useful
idle slot, so that it stays cached too. Slots freed below running ones are not closed up:
the next sequence to join takes them. Kept tokens are bounded by a budget, dropped least
recently used first.

A slot's sequence may leave before its answer ends (its client went away, it was cancelled,
or, later, preempted): it keeps its cells as a finished one does. A chat's follow-up then
quotes what its client received, which may be less than the cells hold; a ``Transcript``
finds how much of the answer it quotes, and the prefix match, token by token, reuses no
cell beyond that.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# Moving what a slot kept costs a copy of the slot's cells, whatever it holds (about 2.6 ms
# for 2,048 cells of the 512x8 test model, at the next decode): not worth it for a few tokens.
STASH_MIN = 32


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class Claim:
    """Where a joining sequence goes, and the moves that get its cells there.

    The engine moves what ``slot`` kept to ``stash`` (when set), then copies ``source``'s
    cells into ``slot`` (when set), then keeps the first ``shared`` of them."""

    slot: int
    shared: int  # tokens of the prompt whose cells it will have
    source: int | None = None  # the idle slot to copy them from
    stash: int | None = None  # where the slot's own kept cells go first


@dataclass(frozen=True)
class Transcript:
    """A chat an idle slot's cells hold: its prompt as the template rendered it, then the
    bytes of each token of the answer so far (the last may have been sent undecoded)."""

    text: str
    prompt: list[int]
    answer: list[int]
    pieces: list[bytes]

    def quoted(self, text: str) -> tuple[list[int], str] | None:
        """The tokens of this chat that ``text`` repeats (its prompt, then as much of its
        answer as ``text`` quotes, whole tokens only), and the rest of ``text``; None when
        ``text`` does not start with this prompt."""
        if not text.startswith(self.text):
            return None
        data = text.encode()
        at, quoted = len(self.text.encode()), 0
        for piece in self.pieces:
            if not data.startswith(piece, at):
                break
            at, quoted = at + len(piece), quoted + 1
        try:
            rest = data[at:].decode()
        except UnicodeDecodeError:  # the quote ends inside a character
            return None
        return self.prompt + self.answer[:quoted], rest


class PrefixCache:
    def __init__(self, n_slots: int, budget: int) -> None:
        self.budget = max(budget, 0)  # tokens idle slots may keep, in all; 0: none
        # Idle slots, least recently used first, with the tokens their cells still hold.
        self._idle: OrderedDict[int, list[int]] = OrderedDict((s, []) for s in range(n_slots))
        self.tokens = 0  # tokens kept by idle slots

    @property
    def idle(self) -> int:
        return len(self._idle)

    def kept(self) -> dict[int, list[int]]:
        """The idle slots that hold tokens, and those tokens."""
        return {slot: tokens for slot, tokens in self._idle.items() if tokens}

    def claim(self, prompt: list[int]) -> Claim:
        """Take the lowest idle slot for ``prompt``, with its longest cached prefix."""
        if not self._idle:
            raise LookupError("every slot is busy")
        slot = min(self._idle)
        source, shared = None, 0
        for other, tokens in self._idle.items():
            n = common_prefix(tokens, prompt)
            if n > shared or (n == shared and n and other == slot):
                source, shared = other, n
        order = list(self._idle)
        held = self._idle.pop(slot)
        stash = None
        if len(held) >= STASH_MIN and source != slot:
            stash = self._stash_for(source)
            if stash is not None:
                self.tokens -= len(self._idle[stash])
                # The kept tokens move, and keep the age they had in ``slot``.
                order.remove(stash)
                order[order.index(slot)] = stash
                kept = {**self._idle, stash: held}
                self._idle = OrderedDict((s, kept[s]) for s in order)
        if stash is None:
            self.tokens -= len(held)
        if source is not None and source != slot:
            self._idle.move_to_end(source)  # just used
        return Claim(slot, shared, None if source == slot else source, stash)

    def _stash_for(self, keep: int | None) -> int | None:
        """The idle slot whose loss costs least: an empty one, else the least recently
        used, never ``keep``; the highest such slot, away from the running ones."""
        candidates = [s for s in self._idle if s != keep]
        if not candidates:
            return None
        empty = [s for s in candidates if not self._idle[s]]
        return max(empty) if empty else candidates[0]

    def release(self, slot: int, tokens: list[int]) -> list[int]:
        """A slot is idle again, its cells holding ``tokens``. The slots whose cells the
        caller must clear to stay within the budget (``slot`` itself among them when its
        tokens cannot be kept at all)."""
        if len(tokens) > self.budget:
            self._idle[slot] = []
            return [slot]
        self._idle[slot] = tokens
        self.tokens += len(tokens)
        cleared = []
        for other in list(self._idle):
            if self.tokens <= self.budget:
                break
            if other != slot and self._idle[other]:
                self.tokens -= len(self._idle[other])
                self._idle[other] = []
                cleared.append(other)
        return cleared
