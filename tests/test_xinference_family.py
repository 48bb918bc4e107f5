"""Xinference's custom-model JSON read into xb's family shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.xinference_template import custom
from xb.core.registry import RegistryError, builtin_families, parse_family
from xb.core.xinference_family import from_xinference

pytestmark = pytest.mark.unit


def read(data: dict[str, Any], model_type: str = "LLM") -> tuple[Any, list[str]]:
    family, skipped = from_xinference(data, model_type, builtin_families())
    return parse_family(json.dumps(family)), skipped


def test_the_documented_template_registers() -> None:
    family, skipped = read(custom())
    assert skipped == ["model_specs[0] is 'pytorch', which xb does not run"]
    (spec,) = family.model_specs
    assert (spec.model_format, spec.model_size_in_billions) == ("gguf", "7")
    assert spec.quantizations == ["Q4_K_M"] and spec.model_uri == "/models/tiny.gguf"
    assert family.model_ability == ["generate", "chat"]  # tools: every chat model has them
    assert family.context_length == 32768


def test_hub_specs_and_sizes() -> None:
    spec = {
        "model_format": "ggufv2",
        "model_size_in_billions": 0.5,
        "model_src": {
            "huggingface": {
                "quantizations": ["Q4_K_M", "Q8_0"],
                "model_id": "org/tiny-GGUF",
                "model_file_name_template": "tiny-{quantization}.gguf",
            },
            "modelscope": {"quantizations": ["Q4_K_M"], "model_id": "org/tiny"},
        },
    }
    family, _ = read(custom(version=1, model_specs=[spec]))
    assert family.model_specs[0].model_size_in_billions == "0_5"
    assert family.model_specs[0].model_id == "org/tiny-GGUF"


def test_model_family_lends_its_template_and_stops() -> None:
    family, _ = read(custom(model_family="vicuna-v1.3"))
    vicuna = builtin_families()["vicuna-v1.3"]
    assert family.chat_template == vicuna.chat_template and family.stop == ["USER:"]
    own, _ = read(custom(model_family="my-own-llama"))  # unknown: the file's template
    assert own.chat_template is None and own.stop == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model_ability": ["chat", "vision"]}, "model_ability"),
        ({"reasoning_start_tag": "<think>"}, "reasoning_start_tag"),
        ({"virtualenv": {"packages": ["transformers"]}}, "virtualenv.packages"),
        ({"model_specs": [{"model_format": "mlx", "model_size_in_billions": 1}]}, "mlx"),
        ({"is_builtin": True}, "is_builtin"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"model_specs": {"model_format": "ggufv2"}}, "model_specs must be a JSON array"),
        ({"model_specs": ["ggufv2"]}, "model_specs must hold JSON objects"),
        ({"virtualenv": ["x"]}, "virtualenv must be a JSON object"),
        ({"model_ability": "chat"}, "model_ability must be a JSON array"),
        (
            {"model_specs": [{"model_format": "ggufv2", "model_uri": "s3://bucket/x.gguf"}]},
            "model_uri",
        ),
    ],
)
def test_what_xb_cannot_honour_is_named(change: dict[str, Any], named: str) -> None:
    with pytest.raises(RegistryError, match=named):
        read(custom(**change))


def test_embedding_families() -> None:
    data = {
        "version": 2,
        "model_name": "my-embed",
        "dimensions": 768,
        "max_tokens": 512,
        "language": ["en"],
        "model_specs": [
            {
                "model_format": "ggufv2",
                "quantization": "f16",
                "model_uri": "/models/embed.gguf",
                "model_id": None,
            }
        ],
        "virtualenv": None,
        "is_builtin": False,
    }
    family, _ = read(data, "embedding")
    assert family.model_type == "embedding" and family.model_ability == ["embed"]
    assert family.model_lang == ["en"] and family.context_length == 512
