"""Xinference's model-family JSON, as its users register custom models, read into xb's.

Xinference writes a family two ways: version 1 lists ``quantizations`` per spec; version 2
(its custom-model template) has one ``quantization`` per spec, sizes as integers,
``ggufv2`` for GGUF, ``model_uri`` for a file already on disk, hub entries under
``model_src``, and many fields left null. xb keeps its own shape (``xb.core.registry``) and
reads Xinference's into it: null and default fields pass; specs in formats xb does not run
(pytorch, mlx, ...) are set aside and reported; a value xb cannot honour (a vision
ability, a LoRA projector, a virtualenv's packages) is an error that names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xb.core import engines
from xb.core.registry import ModelFamily, RegistryError

# Abilities a family may claim: "tools" is granted (every llama.cpp chat model calls
# tools here, through a grammar), the rest need inputs or outputs xb does not handle.
_REFUSED_ABILITIES = {"vision", "audio", "omni", "reasoning", "hybrid", "rerank"}
# Family fields xb reads as they are, and those it has no use for at their defaults.
_KEPT = {"model_name", "model_description", "model_lang", "model_ability", "context_length"}
_KEPT |= {"chat_template", "stop", "stop_token_ids", "model_specs", "model_type"}
_IGNORED = {"version", "architectures", "dimensions", "tool_parser", "model_family", "language"}
_IGNORED |= {"max_tokens", "is_builtin", "cache_config", "virtualenv", "model_hub"}
_MUST_BE_EMPTY = ("reasoning_start_tag", "reasoning_end_tag", "cache_config")
_SPEC_MUST_BE_EMPTY = ("multimodal_projectors", "draft_model_id", "draft_quantizations")


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, list | dict | str) and not value)


def from_xinference(
    data: Mapping[str, Any], model_type: str, known: Mapping[str, ModelFamily]
) -> tuple[dict[str, Any], list[str]]:
    """xb's family for Xinference's (or xb's own) JSON object, and what was set aside.
    ``known`` are the families a ``model_family`` may name, to inherit its template."""
    for name, kind in (("model_specs", list), ("virtualenv", dict), ("model_ability", list)):
        if data.get(name) is not None and not isinstance(data[name], kind):
            raise RegistryError(f"{name} must be a JSON {'array' if kind is list else 'object'}")
    if not all(isinstance(spec, dict) for spec in data.get("model_specs") or []):
        raise RegistryError("model_specs must hold JSON objects")
    unknown = sorted(set(data) - _KEPT - _IGNORED - set(_MUST_BE_EMPTY))
    if unknown:
        raise RegistryError(f"unknown field {unknown[0]!r}")
    for name in _MUST_BE_EMPTY:
        if not _empty(data.get(name)):
            raise RegistryError(f"{name} cannot be honoured: xb does not parse reasoning")
    if data.get("model_type", model_type) != model_type:
        raise RegistryError(f"model_type is {data['model_type']!r}, not {model_type!r}")
    if data.get("is_builtin"):
        raise RegistryError("is_builtin: a registered family is never a built-in one")
    packages = (data.get("virtualenv") or {}).get("packages")
    if not _empty(packages):
        raise RegistryError("virtualenv.packages cannot be honoured: xb runs models in its own")
    family: dict[str, Any] = {
        k: v for k, v in data.items() if k in _KEPT and v is not None and k != "model_specs"
    }
    family["model_type"] = model_type
    family.setdefault("model_description", "")
    if model_type == "embedding":
        family.setdefault("model_lang", data.get("language") or [])
        family.setdefault("model_ability", ["embed"])
        family.setdefault("context_length", data.get("max_tokens") or 512)
    family.setdefault("model_lang", [])
    family.setdefault("context_length", 2048)  # Xinference's default
    family["model_ability"] = _abilities(family.get("model_ability") or [])
    parent = known.get(str(data.get("model_family") or ""))
    if parent is not None:  # Xinference's custom models take their template from it
        for name in ("chat_template", "stop", "stop_token_ids"):
            if name not in family and getattr(parent, name):
                family[name] = getattr(parent, name)
    specs: list[dict[str, Any]] = []
    skipped: list[str] = []
    for index, raw in enumerate(data.get("model_specs") or []):
        spec = _spec(raw, f"model_specs[{index}]")
        if isinstance(spec, str):
            skipped.append(spec)
        else:
            specs.append(spec)
    if not specs:
        why = "; ".join(skipped) or "there are none"
        raise RegistryError(f"model_specs: no spec in a format xb runs (gguf, ggml): {why}")
    family["model_specs"] = specs
    return family, skipped


def _abilities(claimed: list[str]) -> list[str]:
    refused = sorted(set(claimed) & _REFUSED_ABILITIES)
    if refused:
        raise RegistryError(f"model_ability {refused[0]!r} cannot be honoured: xb serves text")
    abilities = [a for a in claimed if a != "tools"]
    if "chat" in abilities and "generate" not in abilities:
        abilities.insert(0, "generate")  # llama.cpp completes text for any chat model
    return abilities


def _spec(raw: Mapping[str, Any], where: str) -> dict[str, Any] | str:
    """xb's spec, or why it was set aside."""
    fmt = engines.file_format(str(raw.get("model_format", "")))
    if fmt is None:
        return f"{where} is {raw.get('model_format')!r}, which xb does not run"
    for name in _SPEC_MUST_BE_EMPTY:
        if not _empty(raw.get(name)):
            raise RegistryError(f"{where}.{name} cannot be honoured: xb serves text models alone")
    fields = dict(raw)
    source = fields.pop("model_src", None)
    if isinstance(source, dict):  # Xinference's built-in layout: one entry per hub
        if "huggingface" not in source and fields.get("model_uri") is None:
            return f"{where} names no Hugging Face source, the hub xb downloads from"
        entry = source.get("huggingface") or {}
        if not isinstance(entry, dict):
            raise RegistryError(f"{where}.model_src.huggingface must be a JSON object")
        fields.update(entry)
    hub = str(fields.pop("model_hub", None) or "huggingface")
    if hub.lower() != "huggingface" and fields.get("model_uri") is None:
        return f"{where} downloads from {hub!r}; xb downloads from the Hugging Face hub"
    uri = fields.get("model_uri")
    if uri is not None:
        if not str(uri).startswith(("file://", "/")):
            raise RegistryError(f"{where}.model_uri must be a file path on the worker: {uri!r}")
        fields["model_uri"] = str(uri).removeprefix("file://")
    quantization = fields.pop("quantization", None)
    if "quantizations" not in fields:
        fields["quantizations"] = [quantization or "none"]
    size = fields.get("model_size_in_billions")
    fields["model_size_in_billions"] = "0" if size is None else _size(size)
    fields["model_format"] = fmt
    drop = {"activated_size_in_billions", "draft_model_file_name_template"}
    drop |= {"draft_model_revision", *_SPEC_MUST_BE_EMPTY}
    return {k: v for k, v in fields.items() if v is not None and k not in drop}


def _size(size: Any) -> str:
    """Xinference writes 7, 0.5 or "0_5"; xb writes "7" and "0_5"."""
    text = str(size).replace(".", "_")
    return text.removesuffix("_0")
