"""Chat answers: several choices, their usage (whole and streamed), and logprobs."""

from __future__ import annotations

import openai
import pytest

from tests.api.conformance.shared import chat

pytestmark = pytest.mark.e2e


def test_n_choices_differ_and_repeat(client: openai.OpenAI) -> None:
    reply = chat(client, n=3, seed=5)
    texts = [c.message.content for c in reply.choices]
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len(set(texts)) == 3
    assert texts == [c.message.content for c in chat(client, n=3, seed=5).choices]
    assert reply.usage.completion_tokens == 3 * 24
    single = chat(client, seed=5)
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once


def test_n_choices_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        chat(client, n=2, stream=True, stream_options={"include_usage": True}, max_tokens=10)
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 20
    finished = [c.choices[0].index for c in chunks[:-1] if c.choices[0].finish_reason]
    assert sorted(finished) == [0, 1]
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_logprobs(client: openai.OpenAI) -> None:
    reply = chat(client, logprobs=True, top_logprobs=3, max_tokens=8)
    content = reply.choices[0].logprobs.content
    assert len(content) == 8
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for item in content:
        assert item.logprob <= 0
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.logprob
        assert item.bytes == list(item.token.encode())
