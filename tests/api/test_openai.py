"""OpenAI conformance: every parameter real clients send, through the real stack."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.stack import Stack
from xb.core.demo_model import DemoModelConfig, vocabulary

pytestmark = pytest.mark.e2e

HI = [{"role": "user", "content": "Hello there"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}


@pytest.fixture(scope="module", params=[1, 4], ids=lambda n: f"n_parallel={n}")
def client(
    module_stack: Stack, tiny_model: Path, request: pytest.FixtureRequest
) -> Iterator[openai.OpenAI]:
    """The model one sequence at a time, then four at once: every test runs on both."""
    module_stack.launch(
        model_name="tiny", model_path=str(tiny_model), n_ctx=1024, n_parallel=request.param
    )
    module_stack.launch(
        model_name="tiny", model_path=str(tiny_model), model_uid="embed", model_type="embedding"
    )
    with openai.OpenAI(base_url=module_stack.url + "/v1", api_key="x", max_retries=0) as client:
        yield client
    for uid in ("tiny", "embed"):
        httpx.delete(f"{module_stack.url}/v1/models/{uid}", timeout=30)


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        **{"model": "tiny", "messages": HI, "max_tokens": 24, **kwargs}
    )


def token_id(piece: str) -> int:
    return vocabulary(DemoModelConfig().n_words)[0].index(piece)


# ---- sampling -----------------------------------------------------------------------------


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


# ---- n, logprobs, usage -------------------------------------------------------------------


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


# ---- structured output --------------------------------------------------------------------


def test_json_object_parses(client: openai.OpenAI) -> None:
    for seed in range(3):
        reply = chat(client, response_format={"type": "json_object"}, max_tokens=400, seed=seed)
        assert isinstance(json.loads(reply.choices[0].message.content), dict)


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "member": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "member", "tags"],
}


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    format_ = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    for seed in range(4):
        reply = chat(client, response_format=format_, max_tokens=400, seed=seed)
        jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)


def test_a_schema_keyword_that_cannot_be_enforced_is_400(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "number", "multipleOf": 3}}}
    format_ = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with pytest.raises(openai.BadRequestError, match="multipleOf"):
        chat(client, response_format=format_)


# ---- tools --------------------------------------------------------------------------------


def check_call(call: Any, tool: dict[str, Any]) -> None:
    assert call.type == "function" and call.id
    assert call.function.name == tool["function"]["name"]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_tool_choice_required(client: openai.OpenAI) -> None:
    reply = chat(client, tools=[WEATHER, TIME], tool_choice="required", max_tokens=200)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    check_call(call, WEATHER if call.function.name == "get_weather" else TIME)


def test_tool_choice_named(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    for seed in range(3):
        reply = chat(client, tools=[WEATHER, TIME], tool_choice=named, max_tokens=200, seed=seed)
        check_call(reply.choices[0].message.tool_calls[0], TIME)


def test_tool_choice_none_and_auto_answer(client: openai.OpenAI) -> None:
    none = chat(client, tools=[WEATHER], tool_choice="none")
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].message.content
    auto = chat(client, tools=[WEATHER], max_tokens=30)
    message = auto.choices[0].message
    assert message.content or message.tool_calls
    # The tools are described to the model, so the prompt grows.
    assert auto.usage.prompt_tokens > none.usage.prompt_tokens


def test_tool_call_deltas_in_a_stream(client: openai.OpenAI) -> None:
    chunks = list(
        chat(client, tools=[WEATHER], tool_choice="required", stream=True, max_tokens=200)
    )
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].id and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_results_in_history(client: openai.OpenAI) -> None:
    history = [
        *HI,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    reply = chat(client, messages=history, tools=[WEATHER], tool_choice="none")
    assert reply.choices[0].message.content


def test_tool_call_numbers_are_strict_json(client: openai.OpenAI) -> None:
    """Random weights write numbers like 1e999999; those once came back as Infinity."""
    tool = {
        "type": "function",
        "function": {
            "name": "scale",
            "parameters": {
                "type": "object",
                "properties": {"factor": {"type": "number"}},
                "required": ["factor"],
            },
        },
    }

    def strict(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    for seed in range(20):
        reply = chat(client, tools=[tool], tool_choice="required", max_tokens=200, seed=seed)
        arguments = reply.choices[0].message.tool_calls[0].function.arguments
        value = json.loads(arguments, parse_constant=strict)["factor"]
        assert math.isfinite(value), arguments


def test_legacy_functions_map_to_tools(client: openai.OpenAI) -> None:
    legacy = {"functions": [WEATHER["function"]], "function_call": {"name": "get_weather"}}
    reply = chat(client, max_tokens=200, extra_body=legacy)
    choice = reply.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None
    call = choice.message.function_call
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["function"]["parameters"])
    chunks = list(chat(client, max_tokens=200, stream=True, extra_body=legacy))
    deltas = [c.choices[0].delta.function_call for c in chunks if c.choices[0].delta.function_call]
    assert deltas and deltas[0].name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "function_call"
    plain = chat(client, extra_body={"functions": legacy["functions"], "function_call": "none"})
    assert plain.choices[0].message.content and plain.choices[0].message.function_call is None
    # The legacy history: an assistant function_call, then the "function" role's result.
    history = [
        *HI,
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": "{}"},
        },
        {"role": "function", "name": "get_weather", "content": "sunny"},
    ]
    assert chat(client, messages=history).choices[0].message.content


def test_empty_content_keeps_the_tool_call(client: openai.OpenAI) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'},
    }

    def prompt_tokens(content: str | None, calls: list[Any] | None) -> int:
        history = [*HI, {"role": "assistant", "content": content, "tool_calls": calls}]
        return int(chat(client, messages=history, max_tokens=1).usage.prompt_tokens)

    with_call = prompt_tokens(None, [call])
    assert prompt_tokens("", [call]) == with_call  # "" once dropped the call
    assert prompt_tokens("", None) < with_call


# ---- embeddings ---------------------------------------------------------------------------


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model="embed", input=["one", "two words"])
    assert [d.index for d in floats.data] == [0, 1]
    vectors = [d.embedding for d in floats.data]
    assert len(vectors[0]) == DemoModelConfig().n_embd
    assert vectors[0] != vectors[1]
    for vector in vectors:
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-3  # normalised
    assert floats.usage.prompt_tokens > 2
    single = client.embeddings.create(model="embed", input="one")
    assert single.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)
    raw = httpx.post(
        str(client.base_url) + "embeddings",
        json={"model": "embed", "input": "one", "encoding_format": "base64"},
    ).json()
    decoded = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(decoded) // 4}f", decoded)) == pytest.approx(vectors[0])


def test_abilities_are_checked(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="cannot chat"):
        chat(client, model="embed")
    with pytest.raises(openai.BadRequestError, match="cannot embed"):
        client.embeddings.create(model="tiny", input="x")
    models = {m.id: m for m in client.models.list().data}
    assert models["embed"].model_extra["abilities"] == ["embed"]
    assert models["embed"].model_extra["model_type"] == "embedding"


# ---- batching -----------------------------------------------------------------------------


def test_every_parameter_holds_when_requests_are_decoded_together(
    client: openai.OpenAI, module_stack: Stack, tiny_model: Path
) -> None:
    """Deterministic requests of every kind give the same answer alone and all at once.

    A copy of the model without a prefix cache: a prompt whose cells were computed in
    another batch may differ in the last digits of its logits, enough to change a draw."""
    slots = httpx.get(f"{module_stack.url}/v1/models/tiny").json()["n_parallel"]
    module_stack.launch(
        model_name="tiny",
        model_uid="batched",
        model_path=str(tiny_model),
        n_ctx=1024,
        n_parallel=slots,
        prefix_cache_tokens=0,
    )
    format_ = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    named = {"type": "function", "function": {"name": "get_weather"}}
    requests: list[dict[str, Any]] = [
        {"temperature": 0, "max_tokens": 40},
        {"seed": 3, "temperature": 1.2, "max_tokens": 30},
        {"seed": 4, "logprobs": True, "top_logprobs": 2, "max_tokens": 12},
        {"temperature": 0, "logit_bias": {str(token_id("\u2581fe")): 5}, "max_tokens": 20},
        {"seed": 5, "extra_body": {"repeat_penalty": 1.5, "top_k": 8}, "max_tokens": 30},
        {"seed": 6, "stop": ["a"], "max_tokens": 60},
        {"seed": 7, "response_format": format_, "max_tokens": 200},
        {"seed": 8, "tools": [WEATHER], "tool_choice": named, "max_tokens": 200},
        {"seed": 9, "n": 2, "max_tokens": 16},
    ]

    def answer(kwargs: dict[str, Any]) -> Any:
        reply = chat(client, model="batched", **kwargs)
        return [
            (
                c.message.content,
                [(t.token, pytest.approx(t.logprob, abs=1e-3)) for t in c.logprobs.content]
                if c.logprobs
                else None,
                [(t.function.name, t.function.arguments) for t in c.message.tool_calls or []],
                c.finish_reason,
            )
            for c in reply.choices
        ]

    alone = [answer(kwargs) for kwargs in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(answer, requests))
    httpx.delete(f"{module_stack.url}/v1/models/batched", timeout=30)
    assert together == alone
    jsonschema.validate(json.loads(alone[6][0][0]), SCHEMA)
    assert alone[7][0][2][0][0] == "get_weather"
