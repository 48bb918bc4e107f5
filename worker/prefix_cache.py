"""The prefix cache's bookkeeping: which sequence ids are free, which hold the KV cells of a
finished sequence, and which finished sequence shares the longest prefix with a new prompt.

It only counts; the engine moves the cells. Entries are kept least recently used first and
evicted in that order when the token budget or the sequence ids run out.
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
    def __init__(self, n_seq: int, budget: int) -> None:
        self.budget = max(budget, 0)  # tokens of finished sequences kept at most; 0: none
        self._free = list(range(n_seq - 1, -1, -1))
        self._entries: OrderedDict[int, list[int]] = OrderedDict()
        self.tokens = 0  # tokens held by entries

    def __len__(self) -> int:
        return len(self._entries)

    def best(self, prompt: list[int]) -> tuple[int | None, int]:
        """The entry sharing the longest prefix with ``prompt``, and that length."""
        best, length = None, 0
        for seq_id, tokens in self._entries.items():
            n = common_prefix(tokens, prompt)
            if n > length:
                best, length = seq_id, n
        return best, length

    def size(self, seq_id: int) -> int:
        return len(self._entries[seq_id])

    def touch(self, seq_id: int) -> None:
        self._entries.move_to_end(seq_id)

    def take(self, seq_id: int) -> list[int]:
        """Remove an entry: its sequence id and cells now belong to the caller."""
        tokens = self._entries.pop(seq_id)
        self.tokens -= len(tokens)
        return tokens

    def alloc(self) -> int | None:
        """A free sequence id (its cells are empty), or None."""
        return self._free.pop() if self._free else None

    def evict(self, keep: int | None = None) -> int | None:
        """Remove the least recently used entry other than ``keep``; the caller clears its
        cells and owns its id. None when there is no such entry."""
        for seq_id in self._entries:
            if seq_id != keep:
                self.take(seq_id)
                return seq_id
        return None

    def put(self, seq_id: int, tokens: list[int]) -> list[int]:
        """Keep a finished sequence's cells; the ids evicted to stay within the budget
        (the caller clears their cells and releases them), ``seq_id`` among them when it
        cannot be kept at all."""
        if len(tokens) == 0 or len(tokens) > self.budget:
            return [seq_id]
        self._entries[seq_id] = tokens
        self.tokens += len(tokens)
        evicted = []
        while self.tokens > self.budget:
            victim = self.evict(keep=seq_id)
            if victim is None:
                break
            evicted.append(victim)
        return evicted

    def release(self, seq_id: int) -> None:
        """Return an id whose cells the caller cleared."""
        self._free.append(seq_id)
