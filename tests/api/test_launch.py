"""Launching like Xinference: its fields, asynchronous launches, progress, cancel, replicas,
request limits, SSE keep-alive, seeds across replicas and the Prometheus metrics."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.stack import Stack, long_chat, wait_until

pytestmark = pytest.mark.e2e


def test_xinference_launch_fields(make_stack: Callable[..., Stack], tiny_model: Path) -> None:
    stack = make_stack(1)
    body = {
        "model_name": "tiny",
        "model_path": str(tiny_model),
        "model_engine": "llama.cpp",
        "model_type": "LLM",
        "model_format": "ggufv2",
        "model_size_in_billions": 1,
        "quantization": "q4_0",
        "n_gpu": "auto",
        "replica": 1,
        "worker_ip": stack.cluster()[0]["host"],
        "n_batch": 64,  # an extra engine keyword argument, passed to llama.cpp
    }
    response = httpx.post(stack.url + "/v1/models", json=body, timeout=60)
    assert response.status_code == 200, response.text
    unknown = {**body, "model_uid": "other", "no_such_option": 1}
    refused = httpx.post(stack.url + "/v1/models", json=unknown, timeout=60)
    assert refused.status_code == 400
    assert "no_such_option is not an option" in refused.json()["error"]["message"]


def test_asynchronous_launch_progress_and_cancel(
    make_stack: Callable[..., Stack], tiny_model: Path
) -> None:
    stack = make_stack(1)
    body = {"model_name": "tiny", "model_path": str(tiny_model), "wait_ready": False}
    response = httpx.post(stack.url + "/v1/models", json=body, timeout=10)
    assert response.json() == {"model_uid": "tiny"}
    first = httpx.get(stack.url + "/v1/models/tiny/progress").json()
    assert first["stage"] in ("loading", "ready")
    ready = wait_until(
        lambda: (
            (r := httpx.get(stack.url + "/v1/models/tiny/progress").json())["stage"] == "ready"
            and r
        )
    )
    assert ready["progress"] == 1.0 and ready["replicas"] == {"ready": 1, "total": 1}
    late = httpx.post(stack.url + "/v1/models/tiny/cancel")
    assert late.status_code == 400  # ready models are terminated, not cancelled

    body = {**body, "model_uid": "halted"}
    assert httpx.post(stack.url + "/v1/models", json=body, timeout=10).status_code == 200
    cancelled = httpx.post(stack.url + "/v1/models/halted/cancel")
    assert cancelled.json() == {"model_uid": "halted", "cancelled": True}
    assert httpx.get(stack.url + "/v1/models/halted").status_code == 404
    assert httpx.get(stack.url + "/v1/models/halted/progress").status_code == 404


def test_a_failed_launch_shows_in_progress(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(1)
    body = {"model_name": "m", "model_path": str(tmp_path / "elsewhere.gguf"), "wait_ready": False}
    assert httpx.post(stack.url + "/v1/models", json=body, timeout=10).status_code == 200
    # The failure of an unattended launch stays visible until the model is terminated.
    failed = wait_until(
        lambda: (
            (r := httpx.get(stack.url + "/v1/models/m/progress").json())["stage"] == "failed" and r
        )
    )
    assert "does not exist" in failed["error"]


def test_scale_replicas_up_and_down(make_stack: Callable[..., Stack], tiny_model: Path) -> None:
    stack = make_stack(2)
    stack.launch(model_name="tiny", model_path=str(tiny_model))
    up = httpx.put(stack.url + "/v1/models/tiny/replicas", json={"replica": 3}, timeout=60)
    assert up.status_code == 200, up.text
    places = up.json()["replicas"]
    assert len(places) == 3 and {r["state"] for r in places} == {"ready"}
    assert len({r["worker_id"] for r in places}) == 2
    down = httpx.put(stack.url + "/v1/models/tiny/replicas", json={"replica": 1}, timeout=60)
    assert [r["state"] for r in down.json()["replicas"]] == ["ready"]
    hosted = [r for w in stack.cluster() for r in w["replicas"]]
    assert len(hosted) == 1
    client = stack.openai_client()
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    zero = httpx.put(stack.url + "/v1/models/tiny/replicas", json={"replica": 0})
    assert zero.status_code == 400


def test_request_limits(make_stack: Callable[..., Stack], endless_model: Path) -> None:
    stack = make_stack(1)
    stack.launch(model_name="e", model_path=str(endless_model), n_ctx=4096, request_limits=1)
    long = long_chat("e")
    with (
        httpx.Client(base_url=stack.url, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=long) as busy,
    ):
        lines = busy.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        refused = http.post("/v1/chat/completions", json={**long, "stream": False})
        assert refused.status_code == 429
        assert "request_limits" in refused.json()["error"]["message"]


def test_keep_alive_comments_while_waiting(
    make_stack: Callable[..., Stack], endless_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(os.environ, "XB_SSE_KEEPALIVE_S", "0.3")
    stack = make_stack(1)
    # One slot, so the second request waits for the first.
    stack.launch(model_name="e", model_path=str(endless_model), n_ctx=4096, n_parallel=1)
    long = long_chat("e", 2000)
    short = {**long, "max_tokens": 2}
    with httpx.Client(base_url=stack.url, timeout=60) as http, ThreadPoolExecutor(1) as pool:
        first = pool.submit(lambda: http.post("/v1/chat/completions", json=long).text)
        wait_until(lambda: stack.in_flight() > 0)
        with http.stream("POST", "/v1/chat/completions", json=short) as waiting:
            assert waiting.status_code == 200
            lines = [line for line in waiting.iter_lines() if line]
        assert first.result().rstrip().endswith("data: [DONE]")
    assert ": keep-alive" in lines  # sent while the request waited its turn
    assert lines[-1] == "data: [DONE]"
    assert sum(line.startswith("data: {") for line in lines) >= 2


def test_same_seed_same_answer_on_every_replica(
    make_stack: Callable[..., Stack], tiny_model: Path
) -> None:
    stack = make_stack(2)
    stack.launch(model_name="tiny", model_path=str(tiny_model), replica=2)
    before = {w["worker_id"]: w["served"] for w in stack.cluster()}

    async def ask() -> list[str]:
        client = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0)

        async def one() -> str:
            reply = await client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "same"}],
                max_tokens=30,
                seed=42,
            )
            return reply.choices[0].message.content or ""

        try:
            return list(await asyncio.gather(*(one() for _ in range(12))))
        finally:
            await client.close()

    answers = asyncio.run(ask())
    served = {w["worker_id"]: w["served"] - before[w["worker_id"]] for w in stack.cluster()}
    assert all(count > 0 for count in served.values()), served  # both replicas answered
    assert len(set(answers)) == 1


def test_metrics(tiny_stack: Stack) -> None:
    stack = tiny_stack
    client = stack.openai_client()
    for _ in range(3):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
    list(client.completions.create(model="tiny", prompt="x", max_tokens=4, stream=True))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "x"}])
    text = httpx.get(stack.url + "/metrics").text
    lines = set(text.splitlines())
    assert 'xb_requests_total{endpoint="chat",model="tiny",status="200"} 3.0' in lines
    assert 'xb_requests_total{endpoint="completions",model="tiny",status="200"} 1.0' in lines
    assert 'xb_requests_total{endpoint="chat",model="ghost",status="404"} 1.0' in lines
    assert 'xb_generated_tokens_total{model="tiny"} 19.0' in lines
    assert 'xb_time_to_first_token_seconds_count{model="tiny"} 4.0' in lines
    assert 'xb_time_per_output_token_seconds_count{model="tiny"} 4.0' in lines
    assert 'xb_model_queue_depth{model="tiny"} 0.0' in lines
    assert 'xb_model_replicas{model="tiny",state="ready"} 1.0' in lines
    assert "xb_workers_alive 1.0" in lines
    worker = stack.cluster()[0]["worker_id"]
    assert any(
        line.startswith(f'xb_worker_memory_free_bytes{{worker="{worker}"}}') for line in lines
    )
