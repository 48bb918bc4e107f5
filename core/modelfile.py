"""What a model file needs in memory, read from its GGUF header without loading weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xb.core.errors import XbError

_OVERHEAD = 64 * 1024 * 1024  # runtime, compute buffers and the Python process around it


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


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(value).decode("utf-8", errors="replace")
    return value.tolist()[0] if hasattr(value, "tolist") else value


def read_gguf_info(path: Path) -> GGUFInfo:
    """The header facts of ``path``; raises ``ModelFileError`` with the reason."""
    import gguf

    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises bare ValueErrors and others on bad files
        raise ModelFileError(f"{str(path)!r} is not a readable GGUF file: {exc}") from exc
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{str(path)!r} has no general.architecture key")

    def number(key: str, default: int = 0) -> int:
        value = _field(reader, f"{arch}.{key}")
        return int(value) if value is not None else default

    n_head = number("attention.head_count", 1)
    return GGUFInfo(
        architecture=arch,
        n_layer=number("block_count"),
        n_embd=number("embedding_length"),
        n_head=n_head,
        n_head_kv=number("attention.head_count_kv", n_head),
        context_length=number("context_length"),
        tensor_bytes=sum(int(t.n_bytes) for t in reader.tensors),
        chat_template=_field(reader, "tokenizer.chat_template"),
        pooling_type=_field(reader, f"{arch}.pooling_type"),
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
