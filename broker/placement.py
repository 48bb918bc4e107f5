"""Where the replicas of a launch go: workers with room, most free memory first, spread out."""

from __future__ import annotations

from xb.broker.table import WorkerEntry
from xb.core.errors import XbError
from xb.core.modelfile import GPU_RUNTIME
from xb.core.units import size_text


class PlacementError(XbError):
    """No worker can take the model; the message gives the need and the largest free space."""


def usable(worker: WorkerEntry, gpu: bool) -> int:
    """Free bytes for a model: GPU memory when it offloads to a worker that has a GPU,
    else RAM; less what models still loading there were promised."""
    memory = worker.memory
    free = memory.gpu_free if gpu and memory.gpu_total else memory.free
    return free - worker.reserved


def replica_need(worker: WorkerEntry, need: int, gpu: bool) -> int:
    """Bytes one replica takes on ``worker``: on its GPU, the CUDA runtime comes on top."""
    return need + GPU_RUNTIME if gpu and worker.memory.gpu_total else need


def place(
    workers: list[WorkerEntry],
    need: int,
    count: int,
    hosting: dict[bytes, int],
    *,
    gpu: bool = False,
) -> list[WorkerEntry]:
    """Pick a worker for each of ``count`` replicas that each need ``need`` bytes.

    ``hosting`` counts replicas of this model already on each worker: a worker with fewer
    goes first, so replicas spread before they stack. ``gpu``: the model offloads layers,
    so a worker with a GPU is judged by its free GPU memory.
    """
    if not workers:
        raise PlacementError("no worker is connected; start one with xb-worker --broker ...")
    free = {w.identity: usable(w, gpu) for w in workers}
    needs = {w.identity: replica_need(w, need, gpu) for w in workers}
    placed = dict(hosting)
    chosen: list[WorkerEntry] = []
    for _ in range(count):
        fits = [w for w in workers if free[w.identity] >= needs[w.identity]]
        if not fits:
            largest = max(free.values())
            raise PlacementError(
                f"the model needs {size_text(min(needs.values()))} and the largest free "
                f"worker has {size_text(max(largest, 0))}; terminate a model or add a worker"
            )
        best = min(fits, key=lambda w: (placed.get(w.identity, 0), -free[w.identity]))
        chosen.append(best)
        free[best.identity] -= needs[best.identity]
        placed[best.identity] = placed.get(best.identity, 0) + 1
    return chosen
