"""Text completions: prompt lists, logprobs, and echo (scoring a prompt)."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.e2e


def test_completion_logprobs_and_prompt_list(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model="tiny", prompt=["One", "Two"], max_tokens=5, logprobs=2, n=2, seed=1
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for choice in reply.choices:
        assert len(choice.logprobs.tokens) == 5
        assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
        assert "".join(choice.logprobs.tokens) == choice.text
    assert reply.usage.completion_tokens == 20


def test_echo_scores_the_prompt_with_max_tokens_zero(client: openai.OpenAI) -> None:
    prompt = "Once upon a time there was"
    scored = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=2
    )
    choice = scored.choices[0]
    assert choice.text == prompt and scored.usage.completion_tokens == 0
    logprobs = choice.logprobs
    assert "".join(logprobs.tokens) == prompt
    assert logprobs.text_offset[0] == 0
    # The demo model starts a prompt with BOS, so even the first word has a logprob.
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
    again = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=0
    )
    assert again.choices[0].logprobs.token_logprobs == pytest.approx(logprobs.token_logprobs)


def test_echo_then_generate(client: openai.OpenAI) -> None:
    plain = client.completions.create(model="tiny", prompt="Hello", max_tokens=6, temperature=0)
    echoed = client.completions.create(
        model="tiny", prompt="Hello", max_tokens=6, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "Hello" + plain.choices[0].text
    chunks = list(
        client.completions.create(
            model="tiny", prompt="Hello", max_tokens=6, temperature=0, echo=True, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == echoed.choices[0].text
    scored = client.completions.create(
        model="tiny", prompt="Hello", max_tokens=6, temperature=0, echo=True, logprobs=1
    )
    assert scored.choices[0].text == echoed.choices[0].text  # scoring leaves the cache right
    assert "".join(scored.choices[0].logprobs.tokens) == scored.choices[0].text
    empty = client.completions.create(model="tiny", prompt="Hello", max_tokens=0)
    assert empty.choices[0].text == "" and empty.usage.completion_tokens == 0
