"""Structured output: json_object and json_schema response formats."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.api.conformance.shared import SCHEMA, chat

pytestmark = pytest.mark.e2e


def test_json_object_parses(client: openai.OpenAI) -> None:
    for seed in range(3):
        reply = chat(client, response_format={"type": "json_object"}, max_tokens=400, seed=seed)
        assert isinstance(json.loads(reply.choices[0].message.content), dict)


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
