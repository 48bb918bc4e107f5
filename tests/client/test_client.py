"""The Python clients, blocking and asyncio, against a real stack."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.client.handles import HI, check_chat
from tests.stack import Stack
from xb.client import AsyncClient, Client, ClientError

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(module_stack: Stack) -> Any:
    with Client(module_stack.url) as c:
        yield c


def test_model_lifecycle(client: Client, tiny_model: Path) -> None:
    uid = client.launch_model("tiny", model_path=str(tiny_model), model_uid="lc", n_ctx=512)
    assert uid == "lc"
    assert client.list_models()["lc"]["model_name"] == "tiny"
    assert client.describe_model("lc")["abilities"] == ["generate", "chat"]
    assert client.get_launch_model_progress("lc")["stage"] == "ready"
    assert client.get_workers_info()[0]["replicas"][0]["model_uid"] == "lc"
    client.terminate_model("lc")
    assert "lc" not in client.list_models()
    with pytest.raises(ClientError) as info:
        client.get_model("lc")
    assert info.value.status == 404


def test_handles_chat_generate_and_embed(client: Client, tiny_model: Path) -> None:
    client.launch_model("tiny", model_path=str(tiny_model), model_uid="h", n_ctx=512)
    client.launch_model(
        "tiny", model_path=str(tiny_model), model_uid="h-embed", model_type="embedding"
    )
    model = client.get_model("h")
    check_chat(model, tokens=6, seed=2)
    text = model.generate("Once", generate_config={"max_tokens": 5})
    assert text["choices"][0]["finish_reason"] == "length"
    pieces = list(model.generate("Once", generate_config={"max_tokens": 5, "stream": True}))
    assert pieces[-1]["choices"][0]["finish_reason"] == "length"
    f = {
        "name": "f",
        "parameters": {"type": "object", "properties": {"x": {"enum": [1, 2]}}, "required": ["x"]},
    }
    called = model.chat(
        HI,
        tools=[{"type": "function", "function": f}],
        generate_config={"tool_choice": "required", "max_tokens": 100},
    )
    assert called["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "f"
    embedding = client.get_model("h-embed").create_embedding(["a", "b"])
    assert len(embedding["data"]) == 2
    with pytest.raises(ClientError, match="cannot chat"):
        client.get_model("h-embed").chat(HI)
    with pytest.raises(ClientError, match="cannot chat"):
        client.get_model("h-embed").chat(HI, generate_config={"stream": True})


def test_async_client(module_stack: Stack, tiny_model: Path) -> None:
    async def run() -> None:
        async with AsyncClient(module_stack.url) as client:
            uid = await client.launch_model("tiny", model_path=str(tiny_model), model_uid="a")
            assert "a" in await client.list_models()
            model = await client.get_model(uid)
            replies = await asyncio.gather(
                *(model.chat(HI, generate_config={"max_tokens": 4}) for _ in range(4))
            )
            assert all(r["usage"]["completion_tokens"] == 4 for r in replies)
            stream = await model.chat(HI, generate_config={"max_tokens": 4, "stream": True})
            chunks = [chunk async for chunk in stream]
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
            generated = await model.generate("x", generate_config={"max_tokens": 3})
            assert generated["usage"]["completion_tokens"] == 3
            info = await client.scale_model(uid, 1)
            assert info["replica"] == 1
            await client.terminate_model(uid)
            with pytest.raises(ClientError):
                await client.describe_model(uid)
            assert (await client.get_workers_info())[0]["pid"] > 0

    asyncio.run(run())


def test_unreachable() -> None:
    with Client("http://127.0.0.1:9"), pytest.raises(ClientError, match="cannot reach"):
        Client("http://127.0.0.1:9").list_models()
