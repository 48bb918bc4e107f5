"""Stop strings and token accounting, on the real llama.cpp backend with a generated model."""

from __future__ import annotations

from pathlib import Path

import pytest

from xb.protocol import ChatMessage, GenerateParams, ModelSpec
from xb.worker.backend import BackendError, Done, Piece, StopText
from xb.worker.llama_backend import LlamaBackend


@pytest.mark.unit
def test_stop_text_holds_back_a_possible_stop_prefix() -> None:
    text = StopText(["END"])
    assert text.feed(b"hello E") == "hello "
    assert text.feed(b"N") == ""
    assert text.feed(b"D and more") == ""
    assert text.stopped
    assert text.flush() == ""


@pytest.mark.unit
def test_stop_text_releases_a_false_alarm() -> None:
    text = StopText(["END"])
    assert text.feed(b"E") == ""
    assert text.feed(b"X") == "EX"
    assert text.flush() == ""
    assert not text.stopped


@pytest.mark.unit
def test_stop_text_joins_split_utf8() -> None:
    text = StopText([])
    data = "é".encode()
    assert text.feed(data[:1]) == ""
    assert text.feed(data[1:]) == "é"


@pytest.fixture(scope="module")
def backend(tiny_model: Path) -> LlamaBackend:
    return LlamaBackend(tiny_model, ModelSpec("t", "t", str(tiny_model), n_ctx=256))


@pytest.mark.integration
def test_usage_counts_the_tokens_generated(backend: LlamaBackend) -> None:
    items = list(backend.generate("completion", GenerateParams(prompt="abc", max_tokens=9, seed=1)))
    pieces = [i for i in items if isinstance(i, Piece)]
    done = items[-1]
    assert isinstance(done, Done)
    assert done.usage.completion_tokens == len(pieces) <= 9
    assert done.usage.prompt_tokens == len(backend._llm.tokenize(b"abc", add_bos=True))


@pytest.mark.integration
def test_chat_uses_the_template_from_the_file(backend: LlamaBackend) -> None:
    params = GenerateParams(messages=[ChatMessage("user", "hi")], max_tokens=3)
    done = list(backend.generate("chat", params))[-1]
    assert isinstance(done, Done)
    # <s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n, with \n as byte tokens
    assert done.usage.prompt_tokens >= 8
    assert "chat" in backend.abilities


@pytest.mark.integration
def test_prompt_over_the_context_is_refused(backend: LlamaBackend) -> None:
    with pytest.raises(BackendError, match="context"):
        list(backend.generate("completion", GenerateParams(prompt="word " * 400)))
