"""Free and total memory of this machine: RAM from psutil, GPU memory from NVML where present."""

from __future__ import annotations

import functools
import re
from typing import Any

import psutil

from xb.core.protocol import Memory


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


def memory_snapshot(limit: int | None = None, used: int = 0) -> Memory:
    """Memory this worker offers. With a ``limit``, it offers at most that much in all,
    less ``used``, what its models already take."""
    vm = psutil.virtual_memory()
    total, free = int(vm.total), int(vm.available)
    if limit is not None:
        total, free = min(total, limit), max(min(free, limit - used), 0)
    gpu_total, gpu_free = _gpu_memory()
    return Memory(total=total, free=free, gpu_total=gpu_total, gpu_free=gpu_free)


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """Bytes in a size such as "512MB", "8GiB" or "1.5g"; raises ValueError."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size; write it like 512MB or 8GiB")
    return int(float(match.group(1)) * _UNITS[unit])
