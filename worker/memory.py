"""Free and total memory of this machine: RAM from psutil, GPU memory from NVML where present."""

from __future__ import annotations

import functools
from typing import Any

import psutil

from xb.protocol import Memory


@functools.cache
def _nvml() -> Any | None:
    """The initialised NVML module, or None where there is no library, driver or GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
    except Exception:
        return None
    return pynvml


def _gpu_memory() -> tuple[int, int]:
    nvml = _nvml()
    if nvml is None:
        return 0, 0
    total = free = 0
    for index in range(nvml.nvmlDeviceGetCount()):
        info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index))
        total += int(info.total)
        free += int(info.free)
    return total, free


def memory_snapshot(limit: int | None = None) -> Memory:
    """Memory this worker offers; ``limit`` caps the total it reports."""
    vm = psutil.virtual_memory()
    total, free = int(vm.total), int(vm.available)
    if limit is not None:
        total, free = min(total, limit), min(free, limit)
    gpu_total, gpu_free = _gpu_memory()
    return Memory(total=total, free=free, gpu_total=gpu_total, gpu_free=gpu_free)
