"""The response bodies, as sent, against the openai package's own types (validated, where
the package's client only constructs them) and against what ``/openapi.json`` says."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from tests.api.conformance.shared import HI, WEATHER
from tests.stack import Stack
from xb.api import responses

pytestmark = pytest.mark.e2e

CHATS: list[dict[str, Any]] = [
    {"max_tokens": 5},
    {"max_tokens": 4, "n": 2, "seed": 1, "logprobs": True, "top_logprobs": 2},
    {"max_tokens": 200, "tools": [WEATHER], "tool_choice": "required"},
    {
        "max_tokens": 200,
        "functions": [WEATHER["function"]],
        "function_call": {"name": "get_weather"},
    },
]
USAGE = {"include_usage": True}
COMPLETIONS: list[dict[str, Any]] = [
    {"prompt": "Once", "max_tokens": 5},
    {"prompt": ["One", "Two"], "max_tokens": 3, "n": 2, "logprobs": 2, "seed": 1},
    {"prompt": "Once upon", "max_tokens": 0, "echo": True, "logprobs": 1},
]


def post(stack: Stack, path: str, body: dict[str, Any]) -> httpx.Response:
    response = httpx.post(f"{stack.url}/v1/{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response


def events(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON events of a server-sent stream, up to ``[DONE]``."""
    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def test_chat_completions_are_openai_chat_completions(client: openai.OpenAI, stack: Stack) -> None:
    bodies = [
        post(stack, "chat/completions", {"model": "tiny", "messages": HI, **request}).json()
        for request in CHATS
    ]
    for body in bodies:
        ChatCompletion.model_validate(body)
        responses.ChatCompletion.model_validate(body)
    assert bodies[2]["choices"][0]["message"]["tool_calls"]
    assert bodies[3]["choices"][0]["message"]["function_call"]
    streamed = {"model": "tiny", "messages": HI, "max_tokens": 5, "stream": True, "n": 2}
    chunks = events(post(stack, "chat/completions", {**streamed, "stream_options": USAGE}))
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert chunks[-1]["usage"]["completion_tokens"] == 10


# Streamed text completions are left out: the openai package types their chunks as
# Completion, whose finish_reason may not be null, as every chunk but the last has it.
def test_completions_are_openai_completions(client: openai.OpenAI, stack: Stack) -> None:
    for request in COMPLETIONS:
        body = post(stack, "completions", {"model": "tiny", **request}).json()
        Completion.model_validate(body)
        responses.Completion.model_validate(body)


def test_embeddings_are_openai_embedding_responses(client: openai.OpenAI, stack: Stack) -> None:
    for model_input in ["one", ["one", "two words"]]:
        body = post(stack, "embeddings", {"model": "embed", "input": model_input}).json()
        CreateEmbeddingResponse.model_validate(body)
        responses.EmbeddingList.model_validate(body)
    # base64 is decoded by the openai package before it types the response; ours says so.
    encoded = {"model": "embed", "input": "one", "encoding_format": "base64"}
    body = post(stack, "embeddings", encoded).json()
    assert isinstance(body["data"][0]["embedding"], str)
    responses.EmbeddingList.model_validate(body)


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1/chat/completions", responses.ChatCompletion),
        ("/v1/completions", responses.Completion),
        ("/v1/embeddings", responses.EmbeddingList),
    ],
)
def test_openapi_describes_the_responses(stack: Stack, path: str, model: type[BaseModel]) -> None:
    schema = httpx.get(f"{stack.url}/openapi.json", timeout=10).json()
    content = schema["paths"][path]["post"]["responses"]["200"]["content"]
    ref = content["application/json"]["schema"]["$ref"]
    assert ref == f"#/components/schemas/{model.__name__}"
    described = schema["components"]["schemas"][model.__name__]
    assert set(described["required"]) == set(model.model_fields)
    assert ("text/event-stream" in content) == (path != "/v1/embeddings")
