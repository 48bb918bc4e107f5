"""The OpenAI response bodies the inference routes send, as ``/openapi.json`` describes them.

The bodies themselves are built as plain dicts by ``api.convert``; these models only
document them (see ``api.inference``), and tests/api/test_response_types.py checks the
real bodies against the openai package's own types.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length", "tool_calls", "function_call"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt tokens taken from a replica's prefix cache")


class CompletionTokensDetails(BaseModel):
    accepted_prediction_tokens: int = Field(
        description="tokens drafted by speculative decoding that the model agreed with"
    )
    rejected_prediction_tokens: int = Field(
        description="tokens drafted by speculative decoding, checked and thrown away"
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class FunctionCallOut(BaseModel):
    name: str
    arguments: str = Field(description="the arguments as JSON text")


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCallOut


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCallOut] | None = None
    function_call: FunctionCallOut | None = Field(
        None, description="instead of tool_calls, when the request gave the legacy functions"
    )


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: FinishReason
    logprobs: ChatLogprobs | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TextLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="null for an echoed first token")
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: TextLogprobs | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(
        description="floats, or with encoding_format base64 their little-endian float32 bytes"
    )


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    model: str
    data: list[Embedding]
    usage: EmbeddingUsage


def documented(model: type[BaseModel], *, streams: bool) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses``: ``model`` as its JSON body, and with ``streams`` the
    server-sent events it sends instead when the request says ``"stream": true``."""
    content: dict[str, Any] = {}
    if streams:
        content["text/event-stream"] = {
            "schema": {
                "type": "string",
                "description": "with stream: true, chunks as 'data: {json}' events, "
                "ending with 'data: [DONE]'",
            }
        }
    return {200: {"model": model, "content": content}}
