"""Tools: tool_choice, tool calls whole and streamed, their history, legacy functions."""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema
import openai
import pytest

from tests.api.conformance.shared import HI, TIME, WEATHER, chat

pytestmark = pytest.mark.e2e


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
