"""Fields that other servers' clients send: accepted at values that ask for nothing xb
lacks, mapped onto xb's own where xb has the feature, refused by name otherwise.

Xinference's client sends every launch field it knows, nulls included; llama.cpp's and
Xinference's generate configs carry sampling options xb does not run; the OpenAI SDK still
offers the legacy ``functions`` parameters. Ignoring a value that asks for something
would answer a different question than the one asked, so each such value is a 400 that
names the field, while its default (or null) passes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from xb.api.errors import APIError
from xb.api.schemas import ChatCompletionRequest, ChatMessageIn, NamedToolChoice, ToolDef

log = logging.getLogger("xb.api")


def _empty(value: Any) -> bool:
    """None, or an empty list, dict or string: a field left at its default."""
    return value is None or (isinstance(value, list | dict | str) and not value)


def _one_of(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: _empty(value) or value in allowed


def _no_adapters(value: Any) -> bool:
    # {"lora_list": [], ...}: Xinference's empty PEFT config.
    return _empty(value) or (isinstance(value, dict) and all(_empty(v) for v in value.values()))


# Xinference's launch fields that xb has no use for: (accepted, what xb does instead).
_LAUNCH: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_worker": (_one_of(1), "xb runs each replica on one worker"),
    "gpu_idx": (_empty, "xb does not pin replicas to GPU indices; use worker_ip and n_gpu"),
    "peft_model_config": (_no_adapters, "xb does not load LoRA adapters"),
    "replica_config": (_empty, "xb places replicas itself; use replica and worker_ip"),
    "enable_thinking": (_empty, "xb renders chat templates without extra variables"),
    "enable_virtual_env": (_one_of(False), "xb runs every model in its own environment"),
    "virtual_env_packages": (_empty, "xb runs every model in its own environment"),
    "virtual_env_find_links": (_empty, "xb runs every model in its own environment"),
    "envs": (_empty, "xb does not set environment variables per model"),
    "download_hub": (
        _one_of("huggingface"),
        "xb downloads from the Hugging Face hub, or the mirror in HF_ENDPOINT",
    ),
    "model_version": (_empty, "xb launches by model_name, size, format and quantization"),
}

# Generate-config fields of llama.cpp, Xinference and OpenAI that xb does not run.
_GENERATE: dict[str, tuple[Callable[[Any], bool], str]] = {
    "mirostat_mode": (_one_of(0), "mirostat sampling is not supported"),
    "mirostat_tau": (_one_of(5.0), "mirostat sampling is not supported"),
    "mirostat_eta": (_one_of(0.1), "mirostat sampling is not supported"),
    "tfs_z": (_one_of(1.0), "tail-free sampling is not supported"),
    "typical_p": (_one_of(1.0), "typical sampling is not supported"),
    "grammar": (_empty, "is not supported; use response_format json_schema"),
    "lora_name": (_empty, "xb does not load LoRA adapters"),
    "chat_template_kwargs": (_empty, "xb renders chat templates without extra variables"),
    "reasoning_effort": (_empty, "is not supported: xb does not run reasoning controls"),
    "modalities": (_one_of(["text"]), "xb answers with text only"),
    "audio": (_empty, "xb answers with text only"),
    "prediction": (_empty, "predicted outputs are not supported"),
    "web_search_options": (_empty, "xb does not search the web"),
    "stop_token_ids": (_empty, "is not supported; give the stop words in 'stop'"),
    "echo": (_one_of(False), "echo is a /v1/completions parameter"),
}
# Other names for parameters xb has: Xinference's PyTorch generate config.
_ALIASES = {"repetition_penalty": "repeat_penalty"}


def _check(fields: dict[str, Any], table: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    for name, value in fields.items():
        rule = table.get(name)
        if rule is not None and not rule[0](value):
            raise APIError(
                400,
                f"'{name}' {value!r} cannot be honoured: {rule[1]}",
                param=name,
                code="unsupported_parameter",
            )


def launch_extras(extra: dict[str, Any]) -> dict[str, Any]:
    """The engine keyword arguments among a launch body's extra fields, once Xinference's
    own fields are checked and set aside."""
    _check(extra, _LAUNCH)
    return {k: v for k, v in extra.items() if k not in _LAUNCH}


def check_generate(extra: dict[str, Any]) -> dict[str, Any]:
    """Refuse a generate-config field that asks for sampling xb does not run; the values
    of fields that are other names of xb's own, under xb's names."""
    _check(extra, _GENERATE)
    for name in extra:
        if name not in _GENERATE and name not in _ALIASES:
            log.info("ignoring unknown request field %r", name)
    return {_ALIASES[k]: v for k, v in extra.items() if k in _ALIASES and v is not None}


def check_content(messages: list[ChatMessageIn]) -> None:
    """Every content part is text: a picture would otherwise be dropped without a word."""
    for i, message in enumerate(messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            where = f"messages.{i}.content.{j}"
            if part.type != "text":
                raise APIError(
                    400,
                    f"this model takes text only: {where} is an '{part.type}' part; "
                    "send the content as text",
                    param=f"{where}.type",
                    code="unsupported_content",
                )
            if part.text is None:
                raise APIError(400, f"'{where}' is a text part without 'text'", param=where)


def tools(body: ChatCompletionRequest) -> tuple[list[ToolDef], str | None]:
    """The request's tools and tool choice, the legacy ``functions`` and ``function_call``
    mapped onto them (a choice of None: the default for the tools given)."""
    if body.functions is None:
        if body.function_call is not None:
            raise APIError(400, "'function_call' needs 'functions'", param="function_call")
        return list(body.tools or []), _choice(body.tool_choice)
    if body.tools is not None:
        raise APIError(400, "give 'tools' or the legacy 'functions', not both", param="functions")
    if body.tool_choice is not None:
        raise APIError(
            400,
            "give 'tool_choice' with 'tools', or 'function_call' with 'functions'",
            param="tool_choice",
        )
    mapped = [ToolDef(type="function", function=f) for f in body.functions]
    choice = _choice(body.function_call)
    if choice not in (None, "none", "auto") and choice not in {f.name for f in body.functions}:
        raise APIError(
            400,
            f"function_call names {choice!r}, which is not in 'functions'",
            param="function_call",
        )
    return mapped, choice


def _choice(requested: Any) -> str | None:
    if requested is None or isinstance(requested, str):
        return requested
    if isinstance(requested, NamedToolChoice):
        return requested.function.name
    return str(requested.name)  # the legacy {"name": ...}
