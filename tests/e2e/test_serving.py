"""Launch, list, chat, stream, complete, describe and terminate through the real stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.stack import Stack, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served(module_stack: Stack, tiny_model: Path) -> dict[str, Any]:
    uid = module_stack.launch(model_name="tiny", model_path=str(tiny_model), n_ctx=512)
    client = module_stack.openai_client("unused")
    return {"stack": module_stack, "uid": uid, "client": client}


def test_launch_answers_with_the_uid_once_ready(served: dict[str, Any]) -> None:
    assert served["uid"] == "tiny"
    described = httpx.get(f"{served['stack'].url}/v1/models/tiny").json()
    assert [r["state"] for r in described["replicas"]] == ["ready"]


def test_list_models_is_the_openai_list_shape(served: dict[str, Any]) -> None:
    models = served["client"].models.list()
    ids = [m.id for m in models.data]
    assert "tiny" in ids


def test_describe_model(served: dict[str, Any]) -> None:
    body = httpx.get(f"{served['stack'].url}/v1/models/tiny").json()
    assert body["model_name"] == "tiny"
    assert body["model_type"] == "LLM"
    assert set(body["abilities"]) == {"chat", "generate"}
    assert body["replica"] == 1
    worker_ids = {w["worker_id"] for w in served["stack"].cluster()}
    assert body["replicas"][0]["worker_id"] in worker_ids


def test_chat_completion(served: dict[str, Any]) -> None:
    reply = served["client"].chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello!"}], max_tokens=12, seed=1
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 3
    assert reply.usage.completion_tokens == 12
    assert choice.finish_reason == "length"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert choice.message.content and choice.message.content.isprintable()


def test_same_seed_same_answer(served: dict[str, Any]) -> None:
    def ask() -> str | None:
        reply = served["client"].chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Again"}], max_tokens=20, seed=7
        )
        return reply.choices[0].message.content

    assert ask() == ask()


def test_chat_stream_matches_usage(served: dict[str, Any]) -> None:
    stream = served["client"].chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Stream please"}],
        max_tokens=30,
        stream=True,
        seed=3,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    whole = served["client"].chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Stream please"}],
        max_tokens=30,
        seed=3,
    )
    assert text == whole.choices[0].message.content


def test_stream_ends_with_done(served: dict[str, Any]) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "stream": True,
    }
    with httpx.stream("POST", served["stack"].url + "/v1/chat/completions", json=body) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_text_completion_and_stop(served: dict[str, Any]) -> None:
    reply = served["client"].completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=40, seed=5
    )
    text = reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert len(text) > 0
    stop_at = text.strip()[:2]
    stopped = served["client"].completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=40, seed=5, stop=[stop_at]
    )
    assert stop_at not in stopped.choices[0].text
    assert stopped.choices[0].finish_reason == "stop"


def test_completion_stream_and_prompt_list(served: dict[str, Any]) -> None:
    stream = served["client"].completions.create(
        model="tiny", prompt=["Tell me"], max_tokens=10, stream=True
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert sum(len(c.choices[0].text) for c in chunks) > 0


def test_message_content_as_text_parts(served: dict[str, Any]) -> None:
    reply = served["client"].chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        max_tokens=4,
    )
    assert reply.usage is not None and reply.usage.completion_tokens >= 1


def test_prompt_longer_than_context_is_400(served: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        served["client"].completions.create(model="tiny", prompt="word " * 2000, max_tokens=4)
    assert "context" in info.value.message


def test_unknown_model_is_404(served: dict[str, Any]) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        served["client"].chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert "nope" in info.value.message


def test_launch_with_missing_file_is_refused(served: dict[str, Any]) -> None:
    response = httpx.post(
        served["stack"].url + "/v1/models",
        json={"model_name": "x", "model_path": "/nonexistent/x.gguf"},
        timeout=30,
    )
    assert response.status_code == 400
    assert "does not exist" in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "load_failed"
    assert "x" not in [
        m["id"] for m in httpx.get(served["stack"].url + "/v1/models").json()["data"]
    ]


def test_duplicate_uid_is_refused(served: dict[str, Any], tiny_model: Path) -> None:
    response = httpx.post(
        served["stack"].url + "/v1/models",
        json={"model_name": "t", "model_path": str(tiny_model), "model_uid": "tiny"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_exists"


def test_terminate_removes_the_model(served: dict[str, Any], tiny_model: Path) -> None:
    stack: Stack = served["stack"]
    uid = stack.launch(model_name="tiny", model_path=str(tiny_model), model_uid="doomed", n_ctx=256)
    (worker,) = stack.workers

    def model_processes() -> list[psutil.Process]:
        children = psutil.Process(worker.pid).children()
        return [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    (doomed,) = [c for c in model_processes() if "doomed-0" in c.cmdline()]
    assert httpx.delete(f"{stack.url}/v1/models/{uid}").status_code == 200
    wait_until(lambda: doomed not in model_processes(), timeout=10)  # its memory is freed
    assert uid not in [m.id for m in served["client"].models.list().data]
    assert httpx.get(f"{stack.url}/v1/models/{uid}").status_code == 404
    assert httpx.delete(f"{stack.url}/v1/models/{uid}").status_code == 404
    replicas = [r["model_uid"] for w in stack.cluster() for r in w["replicas"]]
    assert uid not in replicas
