"""Xinference's own RESTful client (the ``xinference-client`` package), unchanged, against xb.

Every call it makes that xb can honour works as against Xinference; what xb cannot honour
fails with xb's message, which the client reads from ``detail``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from xinference_client import AsyncRESTfulClient, RESTfulClient
from xinference_client.client.restful.restful_client import (
    RESTfulChatModelHandle,
    RESTfulEmbeddingModelHandle,
)

from tests.client.handles import HI, check_chat
from tests.stack import Stack, wait_until
from tests.xinference_template import custom

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(module_stack: Stack) -> Iterator[RESTfulClient]:
    xinference = RESTfulClient(module_stack.url)
    yield xinference
    xinference.close()


def test_launch_chat_generate_and_describe(client: RESTfulClient, tiny_model: Path) -> None:
    # The client sends n_worker, gpu_idx, peft_model_config, replica_config, envs and the
    # rest, all null or at their defaults, with every launch.
    uid = client.launch_model(
        model_name="tiny",
        model_engine="llama.cpp",
        model_uid="xi",
        model_path=str(tiny_model),
        n_ctx=512,
    )
    assert uid == "xi"
    model = client.get_model(uid)
    assert isinstance(model, RESTfulChatModelHandle)
    check_chat(model, tokens=5, seed=3)
    completion = model.generate("Once", generate_config={"max_tokens": 4})
    assert completion["usage"]["completion_tokens"] == 4
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 10}},
                "required": ["city"],
            },
        },
    }
    called = model.chat(
        HI, tools=[weather], generate_config={"tool_choice": "required", "max_tokens": 60}
    )
    call = called["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather" and "city" in json.loads(call["arguments"])

    described = client.describe_model(uid)
    assert described["model_type"] == "LLM"
    assert described["model_ability"] == ["generate", "chat", "tools"]
    assert described["model_lang"] == [] and described["context_length"] == 512
    assert client.list_models()[uid]["model_name"] == "tiny"
    assert client.get_launch_model_progress(uid)["progress"] == 1.0
    workers = client.get_workers_info()
    assert uid in workers[0]["models"] and workers[0]["work-ip"]
    assert client.get_supervisor_info()["supervisor_ip"].startswith("tcp://")

    added = client.add_model_replica(uid)
    assert added["replica"] == 2 and len(added["replicas"]) == 2
    client.terminate_model(uid)
    assert uid not in client.list_models()


def test_errors_arrive_with_xb_messages(client: RESTfulClient, tiny_model: Path) -> None:
    with pytest.raises(RuntimeError, match="gpu_idx"):
        client.launch_model(
            model_name="tiny", model_engine="llama.cpp", model_path=str(tiny_model), gpu_idx=[0]
        )
    with pytest.raises(RuntimeError, match="'ghost' is not running"):
        client.get_model("ghost")
    uid = client.launch_model(
        model_name="tiny", model_engine="llama.cpp", model_uid="think", model_path=str(tiny_model)
    )
    model = client.get_model(uid)
    assert isinstance(model, RESTfulChatModelHandle)
    with pytest.raises(RuntimeError, match="chat_template_kwargs"):
        model.chat(HI, enable_thinking=True)
    with pytest.raises(RuntimeError, match="mirostat_mode"):
        model.chat(HI, generate_config={"mirostat_mode": 2})
    client.terminate_model(uid)


def test_wait_ready_false_answers_before_the_load(client: RESTfulClient, tmp_path: Path) -> None:
    fields = {
        "model_name": "m",
        "model_engine": "llama.cpp",
        "model_path": str(tmp_path / "x.gguf"),
    }
    with pytest.raises(RuntimeError, match="does not exist"):
        client.launch_model(model_uid="waited", **fields)  # waits, so sees the load fail
    # wait_ready travels as a query parameter: the launch answers at once, the failure
    # shows in the progress afterwards.
    uid = client.launch_model(model_uid="unwaited", wait_ready=False, **fields)
    failed = wait_until(
        lambda: (r := client.get_launch_model_progress(uid))["stage"] == "failed" and r
    )
    assert "does not exist" in failed["error"]
    client.terminate_model(uid)


def test_embeddings(client: RESTfulClient, tiny_model: Path) -> None:
    uid = client.launch_model(
        model_name="tiny", model_type="embedding", model_uid="xe", model_path=str(tiny_model)
    )
    model = client.get_model(uid)
    assert isinstance(model, RESTfulEmbeddingModelHandle)
    vectors = model.create_embedding(["one", "two"])
    assert len(vectors["data"]) == 2
    assert client.describe_model(uid)["model_ability"] == ["embed"]
    client.terminate_model(uid)


def custom_family(path: Path) -> str:
    """A custom model in Xinference's version-2 template, a GGUF file on the worker."""
    spec = {
        "model_format": "ggufv2",
        "model_size_in_billions": 1,
        "quantization": "f32",
        "model_id": None,
        "model_hub": "huggingface",
        "model_uri": f"file://{path}",
        "model_revision": None,
        "model_file_name_template": "tiny.gguf",
    }
    family = custom(
        context_length=4096,
        model_name="my-tiny",
        model_lang=["en"],
        model_ability=["generate", "chat"],
        model_description="a custom model",
        model_family="my-tiny",
        model_specs=[spec],
    )
    return json.dumps(family)


def test_register_a_custom_model_and_launch_it(client: RESTfulClient, tiny_model: Path) -> None:
    client.register_model(model_type="LLM", model=custom_family(tiny_model), persist=False)
    names = {f["model_name"]: f for f in client.list_model_registrations("LLM")}
    assert names["my-tiny"]["is_builtin"] is False
    detailed = {f["model_name"]: f for f in client.list_model_registrations("LLM", detailed=True)}
    assert detailed["my-tiny"]["model_specs"][0]["model_uri"] == str(tiny_model)
    assert client.get_model_registration("LLM", "my-tiny")["context_length"] == 4096
    engines = client.query_engine_by_model_name("my-tiny")
    assert engines["llama.cpp"][0]["quantizations"] == ["f32"]
    uid = client.launch_model(model_name="my-tiny", model_engine="llama.cpp", model_format="ggufv2")
    model = client.get_model(uid)
    assert isinstance(model, RESTfulChatModelHandle)
    assert model.chat(HI, generate_config={"max_tokens": 3})["usage"]["completion_tokens"] == 3
    assert client.describe_model(uid)["model_lang"] == ["en"]
    client.terminate_model(uid)
    client.unregister_model("LLM", "my-tiny")
    assert "my-tiny" not in {f["model_name"] for f in client.list_model_registrations("LLM")}


def test_the_async_client(module_stack: Stack, tiny_model: Path) -> None:
    async def run() -> dict[str, Any]:
        client = AsyncRESTfulClient(module_stack.url)
        try:
            uid = await client.launch_model(
                model_name="tiny",
                model_engine="llama.cpp",
                model_uid="xa",
                model_path=str(tiny_model),
            )
            model = await client.get_model(uid)
            try:
                reply: dict[str, Any] = await model.chat(HI, generate_config={"max_tokens": 3})
            finally:
                await model.close()  # each handle has its own session
            await client.terminate_model(uid)
            return reply
        finally:
            await client.close()

    assert asyncio.run(run())["usage"]["completion_tokens"] == 3
