"""A ChatGLM2 model served end to end through chatglm.cpp."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(module_stack: Stack, chatglm_model: Path) -> openai.OpenAI:
    body = {
        "model_name": "glm",
        "model_path": str(chatglm_model),
        "model_format": "ggml",
        "model_engine": "chatglm.cpp",
    }
    response = httpx.post(module_stack.url + "/v1/models", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return module_stack.openai_client()


HI = [{"role": "user", "content": "Hello, who are you?"}]


def test_chat_and_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="glm", messages=HI, max_tokens=40)
    text = reply.choices[0].message.content
    assert text and text.isprintable()
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 40
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_stream_matches_greedy_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="glm", messages=HI, max_tokens=20, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="glm", messages=HI, max_tokens=20, temperature=0, stream=True
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="glm", prompt="Once upon a time", max_tokens=8)
    assert reply.usage is not None and reply.usage.completion_tokens <= 8


def test_what_chatglm_cannot_do_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="'seed' is not supported"):
        client.chat.completions.create(model="glm", messages=HI, seed=1)
    with pytest.raises(openai.BadRequestError, match="'logprobs' is not supported"):
        client.chat.completions.create(model="glm", messages=HI, logprobs=True)


def test_wrong_engine_for_the_format_is_400(module_stack: Stack, chatglm_model: Path) -> None:
    body = {"model_name": "x", "model_path": str(chatglm_model), "model_engine": "llama.cpp"}
    response = httpx.post(module_stack.url + "/v1/models", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model_engine"
