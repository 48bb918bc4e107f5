"""Between the OpenAI schema and the protocol: request bodies in, response objects out."""

from __future__ import annotations

import base64
import json
import logging
import re
import struct
import time
from typing import Any

from xb.api import compat
from xb.api.errors import APIError
from xb.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    SamplingParams,
)
from xb.core import protocol as p

log = logging.getLogger("xb.api")

# llama.cpp's defaults, which its users expect when a request leaves them out.
DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0}


def unsupported(param: str, why: str) -> APIError:
    return APIError(400, f"'{param}' {why}", param=param, code="unsupported_parameter")


_TOKEN_ID = re.compile(r"[0-9]{1,10}")
MAX_TOKEN_ID = 2**31 - 1  # llama.cpp's token ids are 32-bit
MAX_ANSWERS = 128  # prompts times n in one completion request; half the default queue


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        # ASCII digits only: str.isdigit also takes '²', which int() does not.
        if not _TOKEN_ID.fullmatch(key) or int(key) > MAX_TOKEN_ID:
            raise APIError(
                400,
                f"logit_bias keys are token ids (0 to {MAX_TOKEN_ID}); got {key!r}",
                param="logit_bias",
            )
        if not -100 <= value <= 100:
            raise APIError(400, "logit_bias values lie in [-100, 100]", param="logit_bias")
        out[int(key)] = value
    return out


def _sampling(body: SamplingParams) -> dict[str, Any]:
    aliased = compat.check_generate(body.model_extra or {})
    for name, value in aliased.items():
        if getattr(body, name) is not None:
            raise APIError(400, f"'{name}' is given under two names", param=name)
        if not isinstance(value, int | float) or value <= 0:
            raise APIError(400, f"'{name}' must be a positive number", param=name)
    fields: dict[str, Any] = {
        name: aliased.get(name, DEFAULTS[name])
        if getattr(body, name) is None
        else getattr(body, name)
        for name in DEFAULTS
    }
    return {
        **fields,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "logit_bias": _logit_bias(body.logit_bias),
        "stop": body.stop_list(),
        "seed": body.seed,
        "speculative": body.speculative,
    }


def chat_params(body: ChatCompletionRequest) -> p.GenerateParams:
    response_format, schema = "text", None
    if body.response_format is not None:
        response_format = body.response_format.type
        if response_format == "json_schema":
            if body.response_format.json_schema is None:
                raise APIError(
                    400,
                    "response_format of type json_schema needs a 'json_schema' object",
                    param="response_format",
                )
            schema = json.dumps(body.response_format.json_schema.schema_)
    compat.check_content(body.messages)
    defs, requested = compat.tools(body)
    tools = [
        p.Tool(t.function.name, t.function.description, json.dumps(t.function.parameters))
        for t in defs
    ]
    choice = requested or ("auto" if tools else "none")
    if choice not in ("none", "auto", "required") and choice not in {t.name for t in tools}:
        raise APIError(
            400, f"tool_choice names {choice!r}, which is not in 'tools'", param="tool_choice"
        )
    if choice == "required" and not tools:
        raise APIError(400, "tool_choice 'required' needs 'tools'", param="tool_choice")
    return p.GenerateParams(
        # A legacy "function" message is a tool result under its old name.
        messages=[p.ChatMessage(_ROLES.get(m.role, m.role), m.text()) for m in body.messages],
        max_tokens=body.max_completion_tokens or body.max_tokens,
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs or 0,
        response_format=response_format,
        json_schema=schema,
        tools=tools,
        tool_choice=choice,
        **_sampling(body),
    )


_ROLES = {"function": "tool"}


def completion_prompts(body: CompletionRequest) -> list[str]:
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    if any(not isinstance(item, str) for item in prompt):
        raise unsupported("prompt", "as token ids is not supported: send text")
    if not prompt:
        raise APIError(400, "'prompt' is an empty list", param="prompt")
    if len(prompt) * body.n > MAX_ANSWERS:
        # More than a model's queue may hold: a 429 would say to retry, which never helps.
        raise APIError(
            400,
            f"'prompt': {len(prompt)} prompts with n={body.n} make {len(prompt) * body.n} "
            f"answers; one request makes at most {MAX_ANSWERS}: split the list",
            param="prompt",
        )
    return [str(item) for item in prompt]


def completion_params(body: CompletionRequest, prompt: str) -> p.GenerateParams:
    if body.best_of not in (None, 1) and body.best_of != body.n:
        raise unsupported("best_of", "other than n is not supported")
    if body.suffix:
        raise unsupported("suffix", "is not supported")
    return p.GenerateParams(
        prompt=prompt,
        max_tokens=body.max_tokens,
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or 0,
        echo=body.echo,
        **_sampling(body),
    )


def embedding_inputs(body: EmbeddingRequest) -> list[str]:
    compat.check_generate(body.model_extra or {})
    if body.dimensions is not None:
        raise unsupported("dimensions", "is not supported: the model's size is fixed")
    items = [body.input] if isinstance(body.input, str) else list(body.input)
    if not items:
        raise APIError(400, "'input' is an empty list", param="input")
    if any(not isinstance(item, str) for item in items):
        raise unsupported(
            "input",
            "as token ids is not supported: the model's tokenizer differs from OpenAI's, "
            "so send the text itself",
        )
    return [str(item) for item in items]


# ---- responses ----------------------------------------------------------------------------


def usage(finals: list[p.Final], prompt_counted: list[bool] | None = None) -> dict[str, Any]:
    """Usage over choices; ``prompt_counted`` says whose prompt tokens count (n > 1 shares).
    ``cached_tokens``: prompt tokens a replica's prefix cache saved computing; accepted and
    rejected prediction tokens: what speculative decoding drafted."""
    counted = [f for f, c in zip(finals, prompt_counted or [True] * len(finals), strict=True) if c]
    prompt = sum(f.usage.prompt_tokens for f in counted)
    completion = sum(f.usage.completion_tokens for f in finals)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(f.usage.cached_tokens for f in counted)},
        "completion_tokens_details": {
            "accepted_prediction_tokens": sum(f.usage.accepted_prediction_tokens for f in finals),
            "rejected_prediction_tokens": sum(f.usage.rejected_prediction_tokens for f in finals),
        },
    }


def chat_logprobs(items: list[p.TokenLogprob]) -> dict[str, Any]:
    def entry(token: str, logprob: float | None) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {
                **entry(i.token, i.logprob),
                "top_logprobs": [entry(t.token, t.logprob) for t in i.top],
            }
            for i in items
        ]
    }


def text_logprobs(items: list[p.TokenLogprob], offset: int = 0) -> dict[str, Any]:
    offsets = []
    for item in items:
        offsets.append(offset)
        offset += len(item.token)
    return {
        "tokens": [i.token for i in items],
        "token_logprobs": [i.logprob for i in items],
        # An echoed prompt's first token has neither: OpenAI gives null for both.
        "top_logprobs": [
            None if i.logprob is None else {t.token: t.logprob for t in i.top} for i in items
        ],
        "text_offset": offsets,
    }


def tool_calls(calls: list[p.ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


class Shape:
    """Builds one endpoint's response objects and stream chunks."""

    object_whole = ""
    object_chunk = ""
    prefix = ""

    def __init__(self, model: str, request_id: str, logprobs: bool) -> None:
        self.model = model
        self.id = f"{self.prefix}-{request_id}"
        self.created = int(time.time())
        self.logprobs = logprobs

    def envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def usage_chunk(self, used: dict[str, int]) -> dict[str, Any]:
        return {**self.envelope(self.object_chunk, []), "usage": used}

    def chunk(
        self, index: int, first: bool, text: str, lp: list[p.TokenLogprob], final: p.Final | None
    ) -> dict[str, Any]:
        raise NotImplementedError

    def whole(
        self, parts: list[tuple[str, list[p.TokenLogprob], p.Final]], used: dict[str, int]
    ) -> dict[str, Any]:
        raise NotImplementedError


class ChatShape(Shape):
    object_whole, object_chunk, prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def __init__(
        self, model: str, request_id: str, logprobs: bool, *, legacy_functions: bool = False
    ) -> None:
        super().__init__(model, request_id, logprobs)
        # Asked with the legacy "functions": answer with the legacy "function_call".
        self.legacy = legacy_functions

    def _calls(self, final: p.Final, stream: bool) -> tuple[dict[str, Any], str]:
        """The message fields for a final's tool calls, and its finish reason."""
        if self.legacy:
            call = final.tool_calls[0]
            function = {"name": call.name, "arguments": call.arguments}
            return {"function_call": function}, "function_call"
        calls = tool_calls(final.tool_calls)
        if stream:
            calls = [{"index": i, **call} for i, call in enumerate(calls)]
        return {"tool_calls": calls}, final.finish_reason

    def chunk(
        self, index: int, first: bool, text: str, lp: list[p.TokenLogprob], final: p.Final | None
    ) -> dict[str, Any]:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text:
            delta["content"] = text
        finish = final.finish_reason if final is not None else None
        if final is not None and final.tool_calls:
            fields, finish = self._calls(final, stream=True)
            delta.update(fields)
        choice: dict[str, Any] = {
            "index": index,
            "delta": delta,
            "finish_reason": finish,
            "logprobs": chat_logprobs(lp) if self.logprobs and lp else None,
        }
        return self.envelope(self.object_chunk, [choice])

    def whole(
        self, parts: list[tuple[str, list[p.TokenLogprob], p.Final]], used: dict[str, int]
    ) -> dict[str, Any]:
        choices = []
        for index, (text, lp, final) in enumerate(parts):
            message: dict[str, Any] = {"role": "assistant", "content": text}
            finish = final.finish_reason
            if final.tool_calls:
                fields, finish = self._calls(final, stream=False)
                message = {"role": "assistant", "content": None, **fields}
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "finish_reason": finish,
                    "logprobs": chat_logprobs(lp) if self.logprobs else None,
                }
            )
        return {**self.envelope(self.object_whole, choices), "usage": used}


class TextShape(Shape):
    object_whole, object_chunk, prefix = "text_completion", "text_completion", "cmpl"

    def chunk(
        self, index: int, first: bool, text: str, lp: list[p.TokenLogprob], final: p.Final | None
    ) -> dict[str, Any]:
        choice = {
            "index": index,
            "text": text,
            "finish_reason": final.finish_reason if final is not None else None,
            "logprobs": text_logprobs(lp) if self.logprobs and lp else None,
        }
        return self.envelope(self.object_chunk, [choice])

    def whole(
        self, parts: list[tuple[str, list[p.TokenLogprob], p.Final]], used: dict[str, int]
    ) -> dict[str, Any]:
        choices = [
            {
                "index": index,
                "text": text,
                "finish_reason": final.finish_reason,
                "logprobs": text_logprobs(lp) if self.logprobs else None,
            }
            for index, (text, lp, final) in enumerate(parts)
        ]
        return {**self.envelope(self.object_whole, choices), "usage": used}


def embedding_response(model: str, final: p.Final, encoding: str) -> dict[str, Any]:
    def encode(vector: list[float]) -> list[float] | str:
        if encoding == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return vector

    return {
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v)}
            for i, v in enumerate(final.embeddings)
        ],
        "usage": {
            "prompt_tokens": final.usage.prompt_tokens,
            "total_tokens": final.usage.total_tokens,
        },
    }
