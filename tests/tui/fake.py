"""A client with fixed answers, so that snapshots of the screens are the same every run.

Only the snapshot tests use it; every behaviour of the dashboard is tested against a
real stack in test_dashboard.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from xb.client.calls import Call

GIB = 1024**3


def _worker(
    worker_id: str, pid: int, served: int, gib: tuple[int, int], model: str, queued: int, age: float
) -> dict[str, Any]:
    total, free = gib
    return {
        "worker_id": worker_id,
        "host": worker_id.rsplit("-", 1)[0],
        "pid": pid,
        "slots": 1,
        "served": served,
        "memory": {"total": total * GIB, "free": free * GIB, "gpu_total": 0, "gpu_free": 0},
        "replicas": [{"model_uid": model, "state": "ready"}],
        "queue_depth": queued,
        "in_flight": 1,
        "heartbeat_age": age,
    }


WORKERS = [
    _worker("gpu-box-1", 101, 12, (64, 40), "qwen2.5-instruct", 0, 0.4),
    _worker("laptop-2", 202, 3, (16, 9), "llama-3.2-instruct", 2, 0.7),
]


def _model(uid: str, name: str, size: str, quant: str, worker: str) -> dict[str, Any]:
    return {
        "id": uid,
        "model_name": name,
        "model_format": "gguf",
        "model_type": "LLM",
        "model_size_in_billions": size,
        "quantization": quant,
        "abilities": ["generate", "chat"],
        "replica": 1,
        "served": 10,
        "tokens": 900,
        "queued": 0,
        "replicas": [{"replica_id": f"{uid}-0", "worker_id": worker, "state": "ready"}],
    }


MODELS = {
    "qwen2.5-instruct": _model(
        "qwen2.5-instruct", "qwen2.5-instruct", "0_5", "q4_k_m", "gpu-box-1"
    ),
    "llama-3.2-instruct": _model(
        "llama-3.2-instruct", "llama-3.2-instruct", "1", "Q4_K_M", "laptop-2"
    ),
}

FAMILIES = [
    {
        "model_name": "qwen2.5-instruct",
        "model_type": "LLM",
        "model_lang": ["en", "zh"],
        "model_ability": ["generate", "chat"],
        "model_formats": ["gguf"],
        "model_sizes_in_billions": ["0_5", "1_5", "3", "7"],
        "quantizations": ["q4_k_m", "q8_0"],
        "context_length": 32768,
        "is_builtin": True,
    },
    {
        "model_name": "chatglm2",
        "model_type": "LLM",
        "model_lang": ["en", "zh"],
        "model_ability": ["generate", "chat"],
        "model_formats": ["ggml"],
        "model_sizes_in_billions": ["6"],
        "quantizations": ["q4_0", "q8_0"],
        "context_length": 8192,
        "is_builtin": True,
    },
]

USAGE = {
    "data": [
        {"tenant": "alice", "model": "qwen2.5-instruct", "requests": 14, "total_tokens": 5210},
        {"tenant": "eval", "model": "llama-3.2-instruct", "requests": 40, "total_tokens": 12800},
    ],
    "active": [
        {"tenant": "eval", "model": "llama-3.2-instruct", "running": 1, "waiting": 2},
        {"tenant": "alice", "model": "qwen2.5-instruct", "running": 1, "waiting": 0},
    ],
}

ANSWERS = {
    "qwen2.5-instruct": "The **sea** is wide and deep.\n\n- waves\n- tides",
    "llama-3.2-instruct": "Oceans cover *most* of the planet.",
}


async def _chunks(text: str) -> AsyncIterator[dict[str, Any]]:
    for word in text.split(" "):
        yield {"choices": [{"delta": {"content": word + " "}}]}
    yield {"choices": [], "usage": {"completion_tokens": len(text.split(" "))}}


class FakeClient:
    base_url = "http://127.0.0.1:9997"

    async def get_workers_info(self) -> list[dict[str, Any]]:
        return WORKERS

    async def list_models(self) -> dict[str, dict[str, Any]]:
        return MODELS

    async def usage(self, since: float | None = None) -> dict[str, Any]:
        return USAGE

    async def list_model_registrations(self, model_type: str = "LLM") -> list[dict[str, Any]]:
        return FAMILIES if model_type == "LLM" else []

    async def _run(self, call: Call) -> Any:
        """What the model handles send: only streamed chats are asked for here."""
        assert call.path == "/v1/chat/completions" and call.json is not None
        return _chunks(ANSWERS[call.json["model"]])

    async def close(self) -> None:
        pass
