"""A llama.cpp batch that rows of tokens are added to, each row one sequence's: its
tokens at consecutive positions, with logits for its last few."""

from __future__ import annotations

from typing import Any

import numpy as np


class Batch:
    def __init__(self, size: int) -> None:
        import llama_cpp

        self._llama = llama_cpp
        self.size = size
        self._raw = llama_cpp.llama_batch_init(size, 0, 1)
        self._tokens = np.ctypeslib.as_array(self._raw.token, shape=(size,))
        self._pos = np.ctypeslib.as_array(self._raw.pos, shape=(size,))
        self._logits = np.ctypeslib.as_array(self._raw.logits, shape=(size,))
        np.ctypeslib.as_array(self._raw.n_seq_id, shape=(size,))[:] = 1
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, tokens: list[int], seq_id: int, start: int, outputs: int) -> None:
        """Sequence ``seq_id``'s ``tokens`` at positions from ``start``, with logits for the
        last ``outputs`` of them."""
        n, count = self.n, len(tokens)
        self._tokens[n : n + count] = tokens
        self._pos[n : n + count] = np.arange(start, start + count)
        self._logits[n : n + count] = 0
        self._logits[n + count - outputs : n + count] = 1
        seq_ids = self._raw.seq_id
        for i in range(n, n + count):
            seq_ids[i][0] = seq_id
        self.n = n + count

    def decode(self, ctx: Any) -> int:
        """llama.cpp's return code: 0 when every token was decoded. Returns once the work
        is done: on a GPU ``llama_decode`` may return before, and steps are timed (their
        logits are read right after anyway)."""
        self._raw.n_tokens = self.n
        code = int(self._llama.llama_decode(ctx, self._raw))
        self._llama.llama_synchronize(ctx)
        return code

    def free(self) -> None:
        self._llama.llama_batch_free(self._raw)
