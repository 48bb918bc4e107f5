"""Launching by name: registration, download from a local hub with progress, the cache,
refusal when no worker has room, and the registry through the API and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hub import Hub
from tests.stack import Stack, wait_until
from xb.core.demo_model import DemoModelConfig, write_demo_model
from xb.core.modelfile import kv_cells
from xb.core.registry import estimate_from_spec, parse_family
from xb.core.settings import DEFAULT_PARALLEL
from xb.core.units import size_text

pytestmark = pytest.mark.e2e
REPO = "xb-test/tiny-chat-GGUF"


@pytest.fixture(scope="module")
def hub_model(models_dir: Path) -> Path:
    """About 4.5 MB: big enough that its download reports progress more than once."""
    config = DemoModelConfig(n_embd=128, n_layer=4, n_ff=512, eos_logit=-1000.0)
    return write_demo_model(models_dir / "hub.gguf", config)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    server = Hub().start()
    monkeypatch.setitem(os.environ, "HF_ENDPOINT", server.url)  # the stack's processes inherit it
    monkeypatch.setitem(os.environ, "HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        yield server
    finally:
        server.stop()


def tiny_family(hub: Hub, hub_model: Path, **changes: Any) -> dict[str, Any]:
    return {
        "model_name": "tiny-chat",
        "model_description": "a tiny random model served by the test hub",
        "model_lang": ["en"],
        "model_ability": ["generate", "chat"],
        "context_length": 4096,
        "model_specs": [
            {
                "model_format": "gguf",
                "model_size_in_billions": "0_01",
                "quantizations": ["f32"],
                "model_id": REPO,
                "model_file_name_template": "tiny-chat-{quantization}.gguf",
                "checksums": {"f32": hub.add(REPO, "tiny-chat-f32.gguf", hub_model)},
            }
        ],
        **changes,
    }


@pytest.fixture
def registered(make_stack: Callable[..., Stack], hub: Hub, hub_model: Path) -> Stack:
    """A stack of one worker with the hub's tiny family registered."""
    stack = make_stack(1)
    assert register(stack, tiny_family(hub, hub_model)).status_code == 200
    return stack


def register(stack: Stack, family: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        stack.url + "/v1/model_registrations/LLM", json={"model": json.dumps(family)}, timeout=10
    )


def test_register_launch_by_name_download_then_cache(
    registered: Stack, hub: Hub, hub_model: Path
) -> None:
    stack = registered
    listed = httpx.get(stack.url + "/v1/model_registrations/LLM").json()
    mine = next(f for f in listed if f["model_name"] == "tiny-chat")
    assert mine["is_builtin"] is False and mine["quantizations"] == ["f32"]
    full = httpx.get(stack.url + "/v1/model_registrations/LLM/tiny-chat").json()
    assert full["model_specs"][0]["model_id"] == REPO

    hub.delay = 0.02  # 20 ms a 64 KiB chunk: the download takes long enough to watch
    body = {
        "model_name": "tiny-chat",
        "quantization": "f32",
        "model_size_in_billions": "0_01",
        "wait_ready": False,
    }
    assert httpx.post(stack.url + "/v1/models", json=body, timeout=10).status_code == 200
    seen = wait_until(
        lambda: (
            (r := httpx.get(stack.url + "/v1/models/tiny-chat/progress").json())["stage"]
            == "downloading"
            and r["download"]["done"] > 0
            and r
        )
    )
    assert seen["download"]["total"] == hub_model.stat().st_size
    assert 0 < seen["progress"] < 0.9
    # Downloads never block heartbeats: the worker stays fresh meanwhile.
    assert max(w["heartbeat_age"] for w in stack.cluster()) < 2.0
    hub.delay = 0.0
    wait_until(
        lambda: httpx.get(stack.url + "/v1/models/tiny-chat/progress").json()["stage"] == "ready"
    )
    client = stack.openai_client()
    reply = client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert sum(hub.gets.values()) == 1

    uid = stack.launch(model_name="tiny-chat", model_uid="again")  # from the cache
    assert uid == "again"
    assert sum(hub.gets.values()) == 1


def test_concurrent_launches_download_once(registered: Stack, hub: Hub) -> None:
    stack = registered
    hub.delay = 0.01
    with ThreadPoolExecutor(2) as pool:
        uids = list(
            pool.map(lambda u: stack.launch(model_name="tiny-chat", model_uid=u), ["one", "two"])
        )
    assert uids == ["one", "two"]
    assert sum(hub.gets.values()) == 1


def test_cancel_a_download_then_resume(registered: Stack, hub: Hub) -> None:
    stack = registered
    hub.delay = 0.1
    body = {"model_name": "tiny-chat", "wait_ready": False}
    assert httpx.post(stack.url + "/v1/models", json=body, timeout=10).status_code == 200
    wait_until(
        lambda: (
            (httpx.get(stack.url + "/v1/models/tiny-chat/progress").json()["download"] or {}).get(
                "done", 0
            )
            > 100_000
        )
    )
    assert httpx.post(stack.url + "/v1/models/tiny-chat/cancel").status_code == 200
    assert httpx.get(stack.url + "/v1/models/tiny-chat").status_code == 404
    time.sleep(0.5)
    hub.delay = 0.0
    stack.launch(model_name="tiny-chat")
    assert hub.ranges and hub.ranges[-1].startswith("bytes=")  # it resumed the partial file


def test_a_bad_checksum_fails_the_launch(
    make_stack: Callable[..., Stack], hub: Hub, hub_model: Path
) -> None:
    stack = make_stack(1)
    family = tiny_family(hub, hub_model)
    family["model_specs"][0]["checksums"] = {"f32": "0" * 64}
    assert register(stack, family).status_code == 200
    response = httpx.post(stack.url + "/v1/models", json={"model_name": "tiny-chat"}, timeout=60)
    assert response.status_code == 400
    assert "checksum" in response.json()["error"]["message"]


def test_refused_when_no_worker_has_room(
    make_stack: Callable[..., Stack], hub: Hub, hub_model: Path
) -> None:
    stack = make_stack(0)
    stack.add_worker("--memory-limit", "64MiB")
    assert register(stack, tiny_family(hub, hub_model)).status_code == 200
    response = httpx.post(stack.url + "/v1/models", json={"model_name": "tiny-chat"}, timeout=30)
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    spec = parse_family(json.dumps(tiny_family(hub, hub_model))).model_specs[0]
    # Four slots of the default n_ctx: the KV cache of every sequence counts.
    need = size_text(estimate_from_spec(spec, "f32", kv_cells(2048, DEFAULT_PARALLEL)))
    # Sizes under 1 GiB read in MiB: "0.06 GiB" said nothing.
    assert f"needs {need}" in message and "largest free worker has 64 MiB" in message
    assert stack.cluster()[0]["memory"]["total"] == 64 * 1024**2
    # A file on the worker is checked there, against the limit, before it loads.
    big = {"model_name": "f", "model_path": str(hub_model), "n_ctx": 100_000}
    refused = httpx.post(stack.url + "/v1/models", json=big, timeout=30)
    assert refused.status_code in (400, 503)
    assert "has 64 MiB" in refused.json()["error"]["message"]
    assert sum(hub.gets.values()) == 0


def test_registration_errors(make_stack: Callable[..., Stack], hub: Hub, hub_model: Path) -> None:
    stack = make_stack(0)
    bad = register(stack, tiny_family(hub, hub_model, context_length="long"))
    assert bad.status_code == 400 and "context_length" in bad.json()["error"]["message"]
    builtin = httpx.get(stack.url + "/v1/model_registrations/LLM").json()[0]["model_name"]
    clash = register(stack, tiny_family(hub, hub_model, model_name=builtin))
    assert clash.status_code == 400 and "built-in" in clash.json()["error"]["message"]
    assert httpx.delete(stack.url + f"/v1/model_registrations/LLM/{builtin}").status_code == 400
    assert httpx.delete(stack.url + "/v1/model_registrations/LLM/nothing").status_code == 404
    assert httpx.get(stack.url + "/v1/model_registrations/LLM/nothing").status_code == 404
    assert register(stack, tiny_family(hub, hub_model)).status_code == 200
    assert register(stack, tiny_family(hub, hub_model)).status_code == 400  # already there
    assert httpx.delete(stack.url + "/v1/model_registrations/LLM/tiny-chat").status_code == 200


def xb(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xb.client", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**stack.env(), "XB_ENDPOINT": stack.url, "COLUMNS": "250"},
    )


def test_registry_and_cache_from_the_command_line(
    make_stack: Callable[..., Stack], hub: Hub, hub_model: Path, tmp_path: Path
) -> None:
    stack = make_stack(1)
    table = xb(stack, "list", "--all")
    assert table.returncode == 0, table.stderr
    assert "qwen2.5-instruct" in table.stdout and "nomic-embed-text-v1.5" in table.stdout
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(tiny_family(hub, hub_model)))
    assert xb(stack, "register", "-f", str(spec)).returncode == 0
    listed = json.loads(xb(stack, "registrations", "--json").stdout)
    assert {"tiny-chat", "qwen2.5-instruct"} <= {f["model_name"] for f in listed}

    launched = xb(
        stack,
        "launch",
        "tiny-chat",
        "--size",
        "0_01",
        "--quantization",
        "f32",
        "--format",
        "gguf",
        "--json",
    )
    assert launched.returncode == 0, launched.stderr
    assert json.loads(launched.stdout) == {"model_uid": "tiny-chat"}
    wrong = xb(stack, "launch", "tiny-chat", "--quantization", "q9", "--uid", "x")
    assert wrong.returncode == 1 and "has no quantization 'q9'" in wrong.stderr

    cached = json.loads(xb(stack, "cache", "list", "--json").stdout)
    assert [(f["repo_id"], f["file"]) for f in cached] == [(REPO, "tiny-chat-f32.gguf")]
    assert xb(stack, "terminate", "tiny-chat").returncode == 0
    removed = xb(stack, "cache", "remove", REPO)
    assert removed.returncode == 0 and "MiB freed" in removed.stdout
    assert json.loads(xb(stack, "cache", "list", "--json").stdout) == []
    assert xb(stack, "unregister", "tiny-chat").returncode == 0
    assert xb(stack, "unregister", "tiny-chat").returncode == 1


def test_python_client_registrations(
    make_stack: Callable[..., Stack], hub: Hub, hub_model: Path
) -> None:
    from xb.client import Client

    stack = make_stack(0)
    with Client(stack.url) as client:
        names = {f["model_name"] for f in client.list_model_registrations("LLM")}
        assert "chatglm2" in names
        embedding = client.list_model_registrations("embedding")
        assert [f["model_ability"] for f in embedding] == [["embed"]]
        client.register_model("LLM", json.dumps(tiny_family(hub, hub_model)))
        assert client.get_model_registration("LLM", "tiny-chat")["is_builtin"] is False
        client.unregister_model("LLM", "tiny-chat")
