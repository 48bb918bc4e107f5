"""How many CPU threads llama.cpp may use: the cores this worker may run on, shared out.

llama.cpp's threads wait for each other at every layer. When a thread loses its core to
another process, every step waits for it: on the 2-core development machine two threads
stream 35-50% faster than one while the second core is idle, and 10-80 times slower while
another process keeps it busy (README, "Serving many users"). So the default leaves one core
to the worker, broker and facade processes that move the tokens, and shares the rest among
the replicas on this worker.
"""

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
    """Threads all of this worker's models share: every core but one, at least one."""
    return max(cores - 1, 1)


def threads_per_replica(budget: int, replicas: int) -> int:
    """Threads for one of ``replicas`` replicas sharing ``budget`` threads."""
    return max(budget // max(replicas, 1), 1)
