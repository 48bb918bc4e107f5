"""The OpenAI and management request bodies the facade accepts (Pydantic)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from xb.api.body import strict_json

MAX_DRAFT_TOKENS = 32  # the longest speculative draft a launch may ask for


class _Body(BaseModel):
    # Unknown fields are kept so the facade can log them; they are otherwise ignored.
    model_config = ConfigDict(extra="allow")


class ContentPart(_Body):
    """One part of a message's content. Only text parts are read: the others are refused
    by name (``api.compat``), since every model xb serves takes text only."""

    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str = "{}"

    @field_validator("arguments")
    @classmethod
    def _json(cls, arguments: str) -> str:
        # The call is written back into the prompt as the model would have made it, and
        # a model's call is JSON: anything else is the client's mistake.
        if arguments:
            try:
                strict_json(arguments)
            except (ValueError, RecursionError) as exc:
                raise ValueError(f"arguments must be a JSON text ({exc})") from None
        return arguments


class ToolCallIn(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageIn(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None  # the legacy form of one tool call

    def text(self) -> str:
        if isinstance(self.content, list):
            content = "".join(part.text or "" for part in self.content)
        else:
            content = self.content or ""
        calls = list(self.tool_calls or [])
        if self.function_call is not None:
            calls.append(ToolCallIn(function=self.function_call))
        if not calls:
            return content
        # The model's own earlier call, written back the way it would have produced it;
        # an empty content ("" as some clients send) must not hide it.
        written = [{"name": c.function.name, "arguments": _arguments(c)} for c in calls]
        call_text = json.dumps(written[0] if len(written) == 1 else written)
        return f"{content}\n{call_text}" if content else call_text


def _arguments(call: ToolCallIn) -> Any:
    return json.loads(call.function.arguments or "{}")  # JSON: checked by FunctionCall


class FunctionDef(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class ToolDef(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(BaseModel):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingParams(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, gt=0.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    stop: str | list[str] | None = Field(None)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=16)
    user: str | None = None  # without API keys, the tenant the broker takes turns between
    # interactive (the default) before any batch request; a key may set another default
    priority: Literal["interactive", "batch"] | None = None
    # false: no speculative drafts for this request, whatever the model was launched with
    speculative: bool = True

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingParams):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # The legacy form of tools and tool_choice, mapped onto them (``api.compat``).
    functions: list[FunctionDef] | None = Field(None, max_length=128)
    function_call: Literal["none", "auto"] | NamedFunction | None = None


class CompletionRequest(SamplingParams):
    prompt: str | list[str] | list[int] | list[list[int]]
    # 0 is allowed here: with echo and logprobs it scores a prompt without generating.
    max_tokens: int | None = Field(None, ge=0)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None


class EmbeddingRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None  # without API keys, the tenant the broker takes turns between
    # interactive (the default) before any batch request; a key may set another default
    priority: Literal["interactive", "batch"] | None = None


class LaunchRequest(_Body):
    """Xinference's launch body; fields xb has no use for are accepted and logged."""

    model_name: str = Field(min_length=1, max_length=200)
    model_path: str | None = None
    model_uid: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    model_type: Literal["LLM", "embedding"] = "LLM"
    model_engine: str | None = None
    model_format: str | None = None
    model_size_in_billions: int | float | str | None = None
    quantization: str | None = None
    replica: int = Field(1, ge=1, le=64)
    n_ctx: int = Field(2048, ge=16, le=1 << 20)
    worker: str | None = None
    worker_ip: str | None = None
    n_gpu: int | Literal["auto"] | None = None
    n_gpu_layers: int | None = Field(None, ge=-1)
    request_limits: int | None = Field(None, ge=1)
    wait_ready: bool = True
    n_parallel: int | None = Field(None, ge=1, le=64)
    prefix_cache_tokens: int | None = Field(None, ge=0)
    speculative: Literal["ngram", "draft", "off"] | None = None
    draft_tokens: int | None = Field(None, ge=1, le=MAX_DRAFT_TOKENS)
    draft_model: str | None = Field(None, min_length=1, max_length=4096)
    # A registry draft model's size (its family's smallest by default) and quantization.
    draft_model_size_in_billions: int | float | str | None = None
    draft_quantization: str | None = Field(None, min_length=1, max_length=200)


class ScaleRequest(BaseModel):
    """``PUT .../replicas``: the number of replicas the model should have."""

    replica: int = Field(ge=1, le=64)


class AddReplicasRequest(BaseModel):
    """``POST .../replicas``, Xinference's scale-up: replicas to add, one by default."""

    replica: int = Field(default=1, ge=1, le=64)
    replica_config: dict[str, Any] | list[dict[str, Any]] | None = None
    model_engine: str | None = None
    n_gpu: int | str | None = None


class RegisterRequest(BaseModel):
    """Xinference's registration body: the family as JSON text (or as an object)."""

    model: str | dict[str, Any]
    persist: bool = True
    overwrite: bool = False
    worker_ip: str | None = None  # registrations are the broker's, for every worker
