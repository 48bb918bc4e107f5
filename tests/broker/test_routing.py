"""Routing policy and placement, on the broker's own tables."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from xb.broker.affinity import Affinity
from xb.broker.placement import PlacementError, place, replica_need
from xb.broker.routing import LeastLoaded
from xb.broker.table import Replica, WorkerEntry
from xb.core import protocol as p
from xb.core.modelfile import GPU_RUNTIME

pytestmark = pytest.mark.unit
GIB = 1024**3


def replica(name: str, in_flight: int = 0, slots: int = 1) -> Replica:
    return Replica(name, "m", name.encode(), p.ModelState.READY, in_flight=in_flight, slots=slots)


def worker(name: str, free_gib: float) -> WorkerEntry:
    return WorkerEntry(
        name.encode(), name, "host", 1, p.Memory(64 * GIB, int(free_gib * GIB)), 1, 0.0
    )


def test_least_loaded_picks_the_idle_replica() -> None:
    busy, idle = replica("a", 1, slots=2), replica("b", 0, slots=2)
    assert LeastLoaded().choose([busy, idle]) is idle


def test_load_is_relative_to_slots() -> None:
    # Two of eight slots busy is a lighter load than one of two.
    wide, narrow = replica("wide", 2, slots=8), replica("narrow", 1, slots=2)
    assert LeastLoaded().choose([narrow, wide]) is wide


def test_no_free_slot_means_none() -> None:
    assert LeastLoaded().choose([replica("a", 1), replica("b", 4, slots=4)]) is None


def test_a_conversation_returns_to_its_replica_while_it_has_a_free_slot() -> None:
    home, other = replica("home", 3, slots=4), replica("other", 0, slots=4)
    assert LeastLoaded().choose([other, home], preferred="home") is home
    home.in_flight = 4
    assert LeastLoaded().choose([other, home], preferred="home") is other


def test_affinity_remembers_the_longest_prefix_and_forgets_the_oldest() -> None:
    table = Affinity(limit=2)
    table.remember("c1", "r0")
    table.remember("c2", "r1")
    assert table.lookup(["c9", "c2", "c1"]) == "r1"
    table.remember("c3", "r0")
    assert table.lookup(["c1"]) is None and len(table) == 2
    table.forget({"r0"})
    assert table.lookup(["c3"]) is None and table.lookup(["c2"]) == "r1"


def test_ties_are_broken_at_random_evenly() -> None:
    policy = LeastLoaded(random.Random(0))
    replicas = [replica("a"), replica("b"), replica("c")]
    counts = Counter(policy.choose(replicas).replica_id for _ in range(3000))  # type: ignore[union-attr]
    assert set(counts) == {"a", "b", "c"}
    assert min(counts.values()) > 900


def test_placement_prefers_most_free_memory() -> None:
    small, big = worker("small", 2), worker("big", 10)
    assert place([small, big], GIB, 1, {}) == [big]


def test_replicas_spread_before_they_stack() -> None:
    small, big = worker("small", 4), worker("big", 10)
    assert {w.worker_id for w in place([small, big], GIB, 2, {})} == {"small", "big"}


def test_placement_counts_what_it_already_placed() -> None:
    only = worker("only", 3)
    assert len(place([only], GIB, 3, {})) == 3
    with pytest.raises(PlacementError):
        place([only], GIB, 4, {})


def test_refusal_gives_need_and_largest_free() -> None:
    w = worker("w", 1.5)
    w.reserved = GIB // 2
    with pytest.raises(PlacementError, match=r"needs 2\.00 GiB.*largest free worker has 1\.00 GiB"):
        place([w], 2 * GIB, 1, {})


def test_no_workers() -> None:
    with pytest.raises(PlacementError, match="no worker"):
        place([], 1, 1, {})


def gpu_worker(name: str, ram_gib: float, gpu_gib: float) -> WorkerEntry:
    memory = p.Memory(64 * GIB, int(ram_gib * GIB), 80 * GIB, int(gpu_gib * GIB))
    return WorkerEntry(name.encode(), name, "host", 1, memory, 1, 0.0)


def test_offloading_models_are_placed_by_gpu_memory() -> None:
    roomy_ram, roomy_gpu = gpu_worker("ram", 60, 2), gpu_worker("gpu", 8, 40)
    assert place([roomy_ram, roomy_gpu], 10 * GIB, 1, {}, gpu=True) == [roomy_gpu]
    assert place([roomy_ram, roomy_gpu], 10 * GIB, 1, {}, gpu=False) == [roomy_ram]
    cpu_only = worker("cpu", 30)  # no GPU at all: its RAM is what it has
    assert place([cpu_only], 10 * GIB, 1, {}, gpu=True) == [cpu_only]
    with pytest.raises(PlacementError, match=r"largest free worker has 40\.00 GiB"):
        place([roomy_ram, roomy_gpu], 50 * GIB, 1, {}, gpu=True)


def test_a_gpu_must_also_hold_the_cuda_runtime_of_each_replica() -> None:
    """A model process that offloads holds a CUDA context beside its buffers (about 0.6 GiB
    on an H200): a GPU with room for the estimate alone is not enough."""
    need = 10 * GIB
    tight = gpu_worker("tight", 60, need / GIB)
    with pytest.raises(PlacementError, match=rf"needs {(need + GPU_RUNTIME) / GIB:.2f} GiB"):
        place([tight], need, 1, {}, gpu=True)
    assert place([tight], need, 1, {}, gpu=False) == [tight]  # on the CPU: RAM, no CUDA
    exact = p.Memory(64 * GIB, 60 * GIB, 80 * GIB, need + GPU_RUNTIME)
    roomy = WorkerEntry(b"roomy", "roomy", "host", 1, exact, 1, 0.0)
    assert place([tight, roomy], need, 1, {}, gpu=True) == [roomy]
    # Two replicas on one GPU take two runtimes.
    with pytest.raises(PlacementError):
        place([gpu_worker("two", 60, 2 * need / GIB + 1)], need, 2, {}, gpu=True)
    assert replica_need(roomy, need, gpu=True) == need + GPU_RUNTIME
    assert replica_need(worker("cpu", 30), need, gpu=True) == need  # no GPU to hold it
