"""A running model as the OpenAI model object and Xinference's description in one."""

from __future__ import annotations

from typing import Any

import msgspec

from xb.core import engines
from xb.core import protocol as p
from xb.core.registry import ModelFamily


def model_entry(info: p.ModelInfo, family: ModelFamily | None = None) -> dict[str, Any]:
    """One model; ``family`` is its registry family, where its name is one.

    Xinference's client picks a handle by ``model_type`` and ``model_ability``, and tools
    such as Dify enable function calling by the "tools" ability: every chat model on
    llama.cpp calls tools here (through a grammar), so they all have it.
    """
    ability = list(info.abilities)
    engine = engines.of_model(info.engine, info.model_format)
    if "chat" in ability and engine is not None and engine.tools:
        ability.append("tools")
    return {
        "id": info.model_uid,
        "object": "model",
        "created": info.created,
        "owned_by": "xb",
        "model_uid": info.model_uid,
        "model_name": info.model_name,
        "model_type": info.model_type,
        "model_format": info.model_format,
        "model_engine": engine.name if engine is not None else info.engine,
        "model_path": info.model_path,
        "n_ctx": info.n_ctx,
        "n_parallel": info.n_parallel,
        "abilities": info.abilities,
        "replica": info.replica,
        "replicas": msgspec.to_builtins(info.replicas),
        "queued": info.queued,
        "served": info.served,
        "tokens": info.tokens,
        "model_size_in_billions": info.model_size_in_billions,
        "quantization": info.quantization,
        # Xinference's names. The context length is the one the model was launched with:
        # what a request can use, whatever the family could be trained to.
        "model_ability": ability,
        "model_lang": list(family.model_lang) if family is not None else [],
        "model_description": family.model_description if family is not None else "",
        "context_length": info.n_ctx,
    }
