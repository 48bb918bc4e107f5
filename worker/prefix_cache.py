"""The prefix cache's bookkeeping: which slot a joining sequence takes, and what it keeps.

Each slot is one llama.cpp sequence with KV cells of its own. A slot that finishes keeps
its cells; a new prompt takes the idle slot whose kept tokens share the longest prefix with
it and decodes only the rest. With no shared prefix it takes an empty slot, else the least
recently used. Kept tokens are bounded by a budget, dropped least recently used first.
This class only counts; the engine moves the cells.
"""

from __future__ import annotations

from collections import OrderedDict


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    def __init__(self, n_slots: int, budget: int) -> None:
        self.budget = max(budget, 0)  # tokens idle slots may keep, in all; 0: none
        # Idle slots, least recently used first, with the tokens their cells still hold.
        self._idle: OrderedDict[int, list[int]] = OrderedDict((s, []) for s in range(n_slots))
        self.tokens = 0  # tokens kept by idle slots

    @property
    def idle(self) -> int:
        return len(self._idle)

    def claim(self, prompt: list[int]) -> tuple[int, int, int]:
        """Take an idle slot for ``prompt``: (slot, prompt tokens it holds already, tokens
        it held). The caller keeps the first of those cells and clears the rest."""
        if not self._idle:
            raise LookupError("every slot is busy")
        best, shared = None, 0
        for slot, tokens in self._idle.items():
            n = common_prefix(tokens, prompt)
            if n > shared:
                best, shared = slot, n
        if best is None:
            empty = [slot for slot, tokens in self._idle.items() if not tokens]
            best = empty[0] if empty else next(iter(self._idle))
        held = self._idle.pop(best)
        self.tokens -= len(held)
        return best, shared, len(held)

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
