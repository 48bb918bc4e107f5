"""Preemption's cells: a sequence that leaves its slot for another request (a batch one
for an interactive request, or one of a tenant holding two slots or more for a tenant
with none) keeps its cells in the model process's memory until it resumes.

Preemption happens when every slot is busy, so no idle slot could keep the cells as the
prefix cache keeps a finished sequence's: the request taking the slot would overwrite
them. Instead llama.cpp copies the sequence's cells out (``llama_state_seq_get_data``,
only the cells it uses: about 16 KiB a token for the 512x8 test model, a few
milliseconds for a thousand tokens) and back into whichever slot it resumes in. Resumed,
the sequence is where it was: the same cells, the token it last sampled still to decode,
its sampler's state untouched; its client sees a pause and nothing else.
"""

from __future__ import annotations

import ctypes
from typing import Any

CellBytes = ctypes.Array[ctypes.c_uint8]


def park(llama: Any, ctx: Any, seq_id: int) -> CellBytes | None:
    """A copy of sequence ``seq_id``'s cells; None when llama.cpp cannot save them."""
    size = int(llama.llama_state_seq_get_size(ctx, seq_id))
    if size <= 0:
        return None
    data = (ctypes.c_uint8 * size)()
    if int(llama.llama_state_seq_get_data(ctx, data, size, seq_id)) != size:
        return None
    return data


def restore(llama: Any, ctx: Any, data: CellBytes, seq_id: int) -> bool:
    """Put parked cells into sequence ``seq_id``, which holds none; False on failure."""
    return int(llama.llama_state_seq_set_data(ctx, data, len(data), seq_id)) == len(data)
