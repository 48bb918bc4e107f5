"""How many CPU threads llama.cpp may use: the cores this worker may run on, shared out
among the replicas that are working (a replica with requests in hand); an idle one takes
nothing from the others, so a model used alone has every core whatever else is loaded.
The worker tells each replica its share as that changes (SHARE), and each replica then
measures, step by step, whether using all of its share is faster than one thread
(``threads.py``): a core another process takes would otherwise stall every step."""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(cores, 1)


def default_budget(cores: int) -> int:
    """Threads all of this worker's models share: one per core it may use."""
    return max(cores, 1)


def threads_per_replica(budget: int, replicas: int) -> int:
    """Threads for one of ``replicas`` working replicas sharing ``budget`` threads."""
    return max(budget // max(replicas, 1), 1)
