"""What both clients' model handles (xb's and Xinference's) must do alike."""

from __future__ import annotations

from typing import Any

HI = [{"role": "user", "content": "Hello"}]


def check_chat(model: Any, tokens: int, seed: int) -> None:
    """The handle answers ``tokens`` tokens, and streams the very same text."""
    config: dict[str, Any] = {"max_tokens": tokens, "seed": seed}
    reply = model.chat(HI, generate_config=config)
    assert reply["usage"]["completion_tokens"] == tokens
    chunks = list(model.chat(HI, generate_config={**config, "stream": True}))
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed == reply["choices"][0]["message"]["content"]
