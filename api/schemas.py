"""The OpenAI and management request bodies the facade accepts (Pydantic)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    # Unknown fields are kept so the facade can log them; they are otherwise ignored.
    model_config = ConfigDict(extra="allow")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class SamplingParams(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None)
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1)
    user: str | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingParams):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(SamplingParams):
    prompt: str | list[str]


class LaunchRequest(_Body):
    model_name: str = Field(min_length=1, max_length=200)
    model_path: str | None = None
    model_uid: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    replica: int = Field(1, ge=1, le=64)
    n_ctx: int = Field(2048, ge=16, le=1 << 20)
    worker: str | None = None


# Parameters whose presence with a non-default value cannot be honoured yet: a 400 names
# them rather than silently ignoring them.
UNSUPPORTED: dict[str, Any] = {
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "response_format": None,
    "logprobs": None,
    "top_logprobs": None,
    "logit_bias": None,
    "best_of": None,
    "echo": False,
    "suffix": None,
}
