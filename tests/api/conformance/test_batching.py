"""Batching: requests decoded together answer as they do alone."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.api.conformance.shared import SCHEMA, WEATHER, chat, token_id
from tests.stack import Stack

pytestmark = pytest.mark.e2e


def test_every_parameter_holds_when_requests_are_decoded_together(
    client: openai.OpenAI, stack: Stack, tiny_model: Path
) -> None:
    """Deterministic requests of every kind give the same answer alone and all at once.

    A copy of the model without a prefix cache: a prompt whose cells were computed in
    another batch may differ in the last digits of its logits, enough to change a draw."""
    slots = httpx.get(f"{stack.url}/v1/models/tiny").json()["n_parallel"]
    stack.launch(
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
    httpx.delete(f"{stack.url}/v1/models/batched", timeout=30)
    assert together == alone
    jsonschema.validate(json.loads(alone[6][0][0]), SCHEMA)
    assert alone[7][0][2][0][0] == "get_weather"
