"""Sampling parameters: each one changes the answer as OpenAI's and llama.cpp's do."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.api.conformance.shared import chat, token_id
from xb.core.demo_model import DemoModelConfig, vocabulary

pytestmark = pytest.mark.e2e


def test_greedy_is_deterministic_without_a_seed(client: openai.OpenAI) -> None:
    first = chat(client, temperature=0).choices[0].message.content
    assert first == chat(client, temperature=0).choices[0].message.content
    assert (
        first == chat(client, temperature=1.5, extra_body={"top_k": 1}).choices[0].message.content
    )


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 1.9},
        {"top_p": 0.05},
        {"extra_body": {"min_p": 0.5}},
        {"extra_body": {"repeat_penalty": 1.8}},
        {"presence_penalty": 2.0},
        {"frequency_penalty": 2.0},
    ],
    ids=lambda c: next(iter(c.get("extra_body", c))),
)
def test_each_sampling_parameter_changes_the_answer(
    client: openai.OpenAI, change: dict[str, Any]
) -> None:
    base = chat(client, seed=11, max_tokens=40).choices[0].message.content
    changed = chat(client, seed=11, max_tokens=40, **change).choices[0].message.content
    assert changed != base


def test_xinference_repetition_penalty_is_repeat_penalty(client: openai.OpenAI) -> None:
    ours = chat(client, seed=11, max_tokens=40, extra_body={"repeat_penalty": 1.8})
    theirs = chat(client, seed=11, max_tokens=40, extra_body={"repetition_penalty": 1.8})
    assert theirs.choices[0].message.content == ours.choices[0].message.content
    assert (
        theirs.choices[0].message.content
        != chat(client, seed=11, max_tokens=40).choices[0].message.content
    )


def test_logit_bias_forces_and_bans_tokens(client: openai.OpenAI) -> None:
    forced = chat(client, logit_bias={str(token_id("\u2581fe")): 100}, max_tokens=6)
    assert forced.choices[0].message.content == " fe" * 6
    greedy = chat(client, temperature=0, max_tokens=1).choices[0].message.content
    banned_id = vocabulary(DemoModelConfig().n_words)[0].index(greedy.replace(" ", "\u2581"))
    banned = chat(client, temperature=0, max_tokens=1, logit_bias={str(banned_id): -100})
    assert banned.choices[0].message.content != greedy


def test_max_completion_tokens(client: openai.OpenAI) -> None:
    reply = chat(client, max_tokens=None, max_completion_tokens=7)
    assert reply.usage.completion_tokens == 7
    assert reply.choices[0].finish_reason == "length"


def test_stop_list_ends_the_answer(client: openai.OpenAI) -> None:
    text = chat(client, seed=4, max_tokens=60).choices[0].message.content
    words = text.split()
    stopped = chat(client, seed=4, max_tokens=60, stop=[words[3], "never-seen"])
    assert stopped.choices[0].finish_reason == "stop"
    assert words[3] not in stopped.choices[0].message.content
    assert text.startswith(stopped.choices[0].message.content)
