"""Free and total memory of this machine: RAM from psutil, GPU memory from NVML where present."""

from __future__ import annotations

import psutil

from xb.protocol import Memory


def _gpu_memory() -> tuple[int, int]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver or no GPU: report none
        return 0, 0
    try:
        total = free = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            total += int(info.total)
            free += int(info.free)
        return total, free
    finally:
        pynvml.nvmlShutdown()


def memory_snapshot(limit: int | None = None) -> Memory:
    """Memory this worker offers; ``limit`` caps the total it reports."""
    vm = psutil.virtual_memory()
    total, free = int(vm.total), int(vm.available)
    if limit is not None:
        total, free = min(total, limit), min(free, limit)
    gpu_total, gpu_free = _gpu_memory()
    return Memory(total=total, free=free, gpu_total=gpu_total, gpu_free=gpu_free)
