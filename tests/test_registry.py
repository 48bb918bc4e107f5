"""Family specs: validation that names the field, spec choice, file names, estimates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from xb.core.registry import (
    Registry,
    RegistryError,
    builtin_families,
    estimate_from_spec,
    file_names,
    parse_family,
    pick_spec,
)

pytestmark = pytest.mark.unit


def family(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model_name": "fam",
        "model_description": "a family",
        "model_lang": ["en"],
        "model_ability": ["generate", "chat"],
        "context_length": 4096,
        "model_specs": [
            {
                "model_format": "gguf",
                "model_size_in_billions": "0_5",
                "quantizations": ["q4_k_m", "q8_0"],
                "model_id": "org/fam-GGUF",
                "model_file_name_template": "fam-{quantization}.gguf",
                "model_file_name_split_template": "fam-{quantization}-{part}.gguf",
                "quantization_parts": {"q8_0": ["00001-of-00002", "00002-of-00002"]},
            },
            {
                "model_format": "gguf",
                "model_size_in_billions": "7",
                "quantizations": ["q4_k_m"],
                "model_id": "org/fam-7B-GGUF",
                "model_file_name_template": "fam-7b-{quantization}.gguf",
            },
        ],
    }
    base.update(changes)
    return base


def test_builtin_families_validate() -> None:
    families = builtin_families()
    for name in ("qwen2.5-instruct", "chatglm2", "orca"):
        assert name in families, sorted(families)
    assert any(f.model_type == "embedding" for f in families.values())


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model_name": "bad name"}, "model_name"),
        ({"context_length": "long"}, "context_length"),
        ({"model_ability": ["chat"]}, "model_ability"),
        ({"model_ability": ["fly"]}, "model_ability"),
        ({"model_specs": []}, "model_specs"),
        ({"surprise": 1}, "surprise"),
        ({"model_specs": [{**family()["model_specs"][1], "model_format": "onnx"}]}, "model_format"),
        (
            {"model_specs": [{**family()["model_specs"][1], "model_file_name_template": "x.gguf"}]},
            "model_file_name_template",
        ),
        (
            {"model_specs": [{**family()["model_specs"][1], "model_size_in_billions": "big"}]},
            "model_size_in_billions",
        ),
    ],
)
def test_bad_specs_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(RegistryError, match=field):
        parse_family(json.dumps(family(**changes)))


def test_pick_spec_and_file_names() -> None:
    fam = parse_family(json.dumps(family()))
    spec, quantization = pick_spec(fam, None, None, None)
    assert (spec.model_size_in_billions, quantization) == ("0_5", "q4_k_m")
    assert file_names(spec, quantization) == ["fam-q4_k_m.gguf"]
    spec, quantization = pick_spec(fam, "ggufv2", "0.5", "q8_0")
    assert file_names(spec, quantization) == [
        "fam-q8_0-00001-of-00002.gguf",
        "fam-q8_0-00002-of-00002.gguf",
    ]
    assert pick_spec(fam, "gguf", "7", None)[0].model_id == "org/fam-7B-GGUF"
    assert pick_spec(fam, "gguf", "7", "Q4_K_M")[1] == "q4_k_m"  # the file's spelling
    with pytest.raises(RegistryError, match="has no quantization 'q2_k'"):
        pick_spec(fam, None, "7", "q2_k")
    with pytest.raises(RegistryError, match="no ggml 3B spec"):
        pick_spec(fam, "ggml", "3", None)


def test_estimates_grow_with_size_and_bits() -> None:
    fam = parse_family(json.dumps(family()))
    small, big = fam.model_specs
    assert estimate_from_spec(small, "q4_k_m", 2048) < estimate_from_spec(small, "q8_0", 2048)
    assert estimate_from_spec(big, "q4_k_m", 2048) > 4 * 1024**3


def test_custom_registrations_persist_and_protect_builtins(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    fam = parse_family(json.dumps(family()))
    registry.register(fam)
    assert Registry(tmp_path).get("fam") == fam
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(fam)
    builtin = next(iter(registry.builtin.values()))
    with pytest.raises(RegistryError, match="built-in"):
        registry.register(builtin)
    with pytest.raises(RegistryError, match="built-in"):
        registry.unregister(builtin.model_name)
    registry.unregister("fam")
    with pytest.raises(RegistryError, match="no model family"):
        registry.get("fam")
