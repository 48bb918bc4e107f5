"""What a model file needs in memory, read from its GGUF header without loading weights.

The header is parsed here rather than with ``gguf.GGUFReader``, which builds every array
of the file (a 49,152-token vocabulary, scores, merges) into Python objects: 2.5-2.9 s
for SmolLM2-135M on a 2-core machine, long enough to stall the broker's loop past its
heartbeats. Arrays are skipped here, so the same header takes tens of milliseconds.
Layout (little-endian, version 2 and 3): magic ``GGUF``, version, tensor count, key
count, the keys with their typed values, then each tensor's name, shape, type, offset.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from xb.core.errors import XbError

_OVERHEAD = 64 * 1024 * 1024  # runtime, compute buffers and the Python process around it
# GPU memory a model process that offloads takes beyond the estimate: mostly its CUDA
# context. On an H200 with CUDA 13 a process held 596 MiB more than estimate_memory gave
# (docs/gpu-check.md); placement and the worker's check add this on a worker with a GPU.
GPU_RUNTIME = 600 * 1024 * 1024
_MAGIC = b"GGUF"
_HEADER_BYTES = 24  # magic, version, tensor count, key count
_STRING, _ARRAY = 8, 9
# Fixed-size value types: GGUF type number -> struct format.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_MAX_DIMS = 8
_MAX_COUNT = 1 << 40  # no real file holds more keys, tensors or array items


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    context_length: int
    tensor_bytes: int
    chat_template: str | None
    pooling_type: int | None


class ModelFileError(XbError):
    """The file is missing or is not a GGUF model that xb can read."""


class _Header:
    """A cursor over a mapped GGUF header."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.at = 0

    def scalar(self, fmt: str) -> int | float | bool:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value  # type: ignore[no-any-return]

    def count(self) -> int:
        value = int(self.scalar("Q"))
        if value > _MAX_COUNT:
            raise ValueError(f"a count of {value} at byte {self.at - 8}")
        return value

    def string(self) -> str:
        size = self.count()
        end = self.at + size
        if end > len(self.data):
            raise ValueError(f"a string runs past the end of the file at byte {self.at}")
        text = self.data[self.at : end].decode("utf-8", errors="replace")
        self.at = end
        return text

    def value(self, kind: int) -> int | float | bool | str | None:
        """The value of type ``kind``; arrays are skipped (None)."""
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, items = int(self.scalar("I")), self.count()
            if item in _SCALARS:
                self.at += struct.calcsize(_SCALARS[item]) * items
            else:
                for _ in range(items):
                    self.value(item)
            return None
        if kind not in _SCALARS:
            raise ValueError(f"unknown value type {kind} at byte {self.at - 4}")
        return self.scalar(_SCALARS[kind])


def _read_header(data: mmap.mmap) -> tuple[dict[str, int | float | bool | str | None], int]:
    """The file's keys (arrays as None) and the bytes its tensors hold."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    header = _Header(data)
    if data[:4] != _MAGIC:
        raise ValueError("it does not start with the GGUF magic")
    header.at = 4
    version = int(header.scalar("I"))
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not read (2 and 3 are)")
    n_tensors, n_keys = header.count(), header.count()
    keys: dict[str, int | float | bool | str | None] = {}
    for _ in range(n_keys):
        key = header.string()
        keys[key] = header.value(int(header.scalar("I")))
    tensor_bytes = 0
    for _ in range(n_tensors):
        header.string()
        dims = int(header.scalar("I"))
        if dims > _MAX_DIMS:
            raise ValueError(f"a tensor of {dims} dimensions")
        elements = 1
        for _ in range(dims):
            elements *= header.count()
        kind = int(header.scalar("I"))
        header.at += 8  # the tensor's offset in the data section
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise ValueError(f"unknown tensor type {kind}") from None
        tensor_bytes += elements * size // block
    return keys, tensor_bytes


def read_gguf_info(path: Path) -> GGUFInfo:
    """The header facts of ``path``; raises ``ModelFileError`` with the reason."""
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    try:
        if path.stat().st_size < _HEADER_BYTES:
            raise ValueError(f"it is too short ({path.stat().st_size} bytes) to be one")
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            keys, tensor_bytes = _read_header(data)
    except (OSError, ValueError, struct.error) as exc:
        raise ModelFileError(f"{str(path)!r} is not a readable GGUF file: {exc}") from exc
    arch = keys.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{str(path)!r} has no general.architecture key")

    def number(key: str, default: int = 0) -> int:
        value = keys.get(f"{arch}.{key}")
        return int(value) if isinstance(value, int | float) else default

    n_head = number("attention.head_count", 1)
    template = keys.get("tokenizer.chat_template")
    pooling = keys.get(f"{arch}.pooling_type")
    return GGUFInfo(
        architecture=arch,
        n_layer=number("block_count"),
        n_embd=number("embedding_length"),
        n_head=n_head,
        n_head_kv=number("attention.head_count_kv", n_head),
        context_length=number("context_length"),
        tensor_bytes=tensor_bytes,
        chat_template=template if isinstance(template, str) else None,
        pooling_type=int(pooling) if isinstance(pooling, int) else None,
    )


def kv_cells(n_ctx: int, sequences: int = 1) -> int:
    """KV cells llama.cpp allocates for ``sequences`` contexts of ``n_ctx`` tokens: each
    rounded up to a multiple of 256."""
    return -(-max(n_ctx, 1) // 256) * 256 * max(sequences, 1)


def estimate_memory(info: GGUFInfo, n_ctx: int, sequences: int = 1) -> int:
    """Bytes to hold the weights, an f16 KV cache for ``sequences`` contexts of ``n_ctx``
    tokens each, and overhead."""
    n_embd_kv = info.n_embd * info.n_head_kv // max(info.n_head, 1)
    kv_cache = 2 * info.n_layer * kv_cells(n_ctx, sequences) * n_embd_kv * 2
    return info.tensor_bytes + kv_cache + _OVERHEAD
