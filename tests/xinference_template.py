"""Xinference's custom model template, as tests of its families and clients use it."""

from __future__ import annotations

from typing import Any


def custom(**changes: Any) -> dict[str, Any]:
    """Xinference's version-2 custom LLM template, as its documentation gives it."""
    base: dict[str, Any] = {
        "version": 2,
        "context_length": 32768,
        "model_name": "custom-tiny",
        "model_lang": ["en", "zh"],
        "model_ability": ["chat", "tools"],
        "model_description": "This is a custom model description.",
        "model_family": "smollm2-instruct",
        "model_specs": [
            {
                "model_format": "pytorch",
                "model_size_in_billions": "0_5",
                "quantization": "none",
                "model_id": None,
                "model_hub": "huggingface",
                "model_uri": "file:///models/tiny",
                "model_revision": None,
                "activated_size_in_billions": None,
            },
            {
                "model_format": "ggufv2",
                "model_size_in_billions": 7,
                "quantization": "Q4_K_M",
                "model_id": None,
                "model_hub": "huggingface",
                "model_uri": "file:///models/tiny.gguf",
                "model_revision": None,
                "model_file_name_template": "tiny.{quantization}.gguf",
                "multimodal_projectors": None,
            },
        ],
        "chat_template": None,
        "stop_token_ids": None,
        "stop": None,
        "reasoning_start_tag": None,
        "reasoning_end_tag": None,
        "cache_config": None,
        "virtualenv": {"packages": [], "inherit_pip_config": True, "index_url": None},
        "is_builtin": False,
    }
    base.update(changes)
    return base
