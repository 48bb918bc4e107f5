"""Bad HTTP input gets a 4xx with the OpenAI error object, never a 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack import Stack
from xb.api.errors import APIError
from xb.core import protocol as p

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def url(module_stack: Stack, tiny_model: Path) -> str:
    module_stack.launch(model_name="tiny", model_path=str(tiny_model), n_ctx=256)
    return module_stack.url


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    return dict(error)


CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"model": "tiny"}, "messages"),
        (CHAT, {"messages": HI}, "model"),
        (CHAT, {"model": "tiny", "messages": []}, "messages"),
        (
            CHAT,
            {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]},
            "messages.0.role",
        ),
        (CHAT, {"model": "tiny", "messages": HI, "temperature": 5}, "temperature"),
        (CHAT, {"model": "tiny", "messages": HI, "max_tokens": 0}, "max_tokens"),
        (CHAT, {"model": "tiny", "messages": HI, "max_tokens": "many"}, "max_tokens"),
        (CHAT, {"model": "tiny", "messages": HI, "n": 17}, "n"),
        (CHAT, {"model": "tiny", "messages": HI, "top_logprobs": 21}, "top_logprobs"),
        (CHAT, {"model": "tiny", "messages": HI, "logit_bias": {"abc": 1}}, "logit_bias"),
        (CHAT, {"model": "tiny", "messages": HI, "logit_bias": {"5": 500}}, "logit_bias"),
        (
            CHAT,
            {"model": "tiny", "messages": HI, "tools": [{"type": "function"}]},
            "tools.0.function",
        ),
        (
            CHAT,
            {
                "model": "tiny",
                "messages": HI,
                "tools": [{"type": "function", "function": {"name": "bad name!"}}],
            },
            "tools.0.function.name",
        ),
        (CHAT, {"model": "tiny", "messages": HI, "tool_choice": "required"}, "tool_choice"),
        (
            CHAT,
            {
                "model": "tiny",
                "messages": HI,
                "tool_choice": {"type": "function", "function": {"name": "ghost"}},
                "tools": [{"type": "function", "function": {"name": "real"}}],
            },
            "tool_choice",
        ),
        (
            CHAT,
            {"model": "tiny", "messages": HI, "response_format": {"type": "xml"}},
            "response_format.type",
        ),
        (
            CHAT,
            {"model": "tiny", "messages": HI, "response_format": {"type": "json_schema"}},
            "response_format",
        ),
        ("/v1/completions", {"model": "tiny", "prompt": [1, 2, 3]}, "prompt"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": -1}, "max_tokens"),
        (
            CHAT,
            {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0",
        ),
        (
            CHAT,
            {"model": "tiny", "messages": HI, "functions": [{"name": "f"}], "tools": []},
            "functions",
        ),
        (CHAT, {"model": "tiny", "messages": HI, "function_call": "auto"}, "function_call"),
        (
            CHAT,
            {
                "model": "tiny",
                "messages": HI,
                "functions": [{"name": "f"}],
                "function_call": {"name": "g"},
            },
            "function_call",
        ),
        (CHAT, {"model": "tiny", "messages": HI, "mirostat_mode": 2}, "mirostat_mode"),
        (
            CHAT,
            {"model": "tiny", "messages": HI, "chat_template_kwargs": {"enable_thinking": True}},
            "chat_template_kwargs",
        ),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "typical_p": 0.5}, "typical_p"),
        (CHAT, {"model": "tiny", "messages": HI, "stop_token_ids": [2]}, "stop_token_ids"),
        (CHAT, {"model": "tiny", "messages": HI, "echo": True}, "echo"),
        (CHAT, {"model": "tiny", "messages": HI, "repetition_penalty": 0}, "repeat_penalty"),
        ("/v1/models", {"model_name": "x", "n_worker": 2}, "n_worker"),
        ("/v1/models", {"model_name": "x", "gpu_idx": [0]}, "gpu_idx"),
        ("/v1/models", {"model_name": "x", "enable_thinking": True}, "enable_thinking"),
        ("/v1/models", {"model_name": "x", "envs": {"A": "1"}}, "envs"),
        (
            "/v1/models",
            {"model_name": "x", "peft_model_config": {"lora_list": [1]}},
            "peft_model_config",
        ),
        ("/v1/models", {"model_name": "x", "enable_virtual_env": True}, "enable_virtual_env"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "suffix": "y"}, "suffix"),
        ("/v1/completions", {"model": "tiny", "prompt": []}, "prompt"),
        ("/v1/embeddings", {"model": "tiny", "input": [1, 2]}, "input"),
        ("/v1/embeddings", {"model": "tiny", "input": []}, "input"),
        ("/v1/embeddings", {"model": "tiny", "input": "x", "dimensions": 8}, "dimensions"),
        (
            "/v1/embeddings",
            {"model": "tiny", "input": "x", "encoding_format": "hex"},
            "encoding_format",
        ),
        ("/v1/models", {"model_name": "x", "model_engine": "vllm"}, "model_engine"),
        ("/v1/models", {"model_name": "x", "model_format": "pytorch"}, "model_format"),
        ("/v1/models", {"model_name": "x", "model_type": "image"}, "model_type"),
        ("/v1/completions", {"model": "tiny"}, "prompt"),
        ("/v1/models", {"model_name": "x", "replica": 0}, "replica"),
        ("/v1/models", {"model_name": "x", "model_uid": "../etc"}, "model_uid"),
        ("/v1/models", {"model_path": "/x.gguf"}, "model_name"),
    ],
)
def test_invalid_bodies_are_400(url: str, path: str, body: dict[str, Any], param: str) -> None:
    assert_error(httpx.post(url + path, json=body, timeout=10), 400, param)


def test_an_image_part_is_refused_by_name(url: str) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    content = [{"type": "text", "text": "what is this?"}, image]
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}]}
    error = assert_error(httpx.post(url + CHAT, json=body, timeout=10), 400)
    assert error["param"] == "messages.0.content.1.type"
    assert "this model takes text only" in error["message"] and "image_url" in error["message"]


def test_errors_carry_a_detail_for_xinference_clients(url: str) -> None:
    response = httpx.post(url + "/v1/models", json={"model_name": "x", "n_worker": 3})
    error = assert_error(response, 400, "n_worker")
    assert response.json()["detail"] == error["message"]
    missing = httpx.get(url + "/v1/models/ghost")
    assert missing.json()["detail"] == missing.json()["error"]["message"]


def test_malformed_json_is_400(url: str) -> None:
    response = httpx.post(
        url + CHAT, content=b"{not json", timeout=10, headers={"content-type": "application/json"}
    )
    assert_error(response, 400)


def test_unknown_fields_are_ignored(url: str) -> None:
    body = {"model": "tiny", "messages": HI, "max_tokens": 2, "frobnicate": True}
    assert httpx.post(url + CHAT, json=body, timeout=10).status_code == 200


def test_unknown_model_name_without_a_path_is_400(url: str) -> None:
    error = assert_error(httpx.post(url + "/v1/models", json={"model_name": "nothing"}), 400)
    assert "model_path" in error["message"]


def test_unknown_worker_is_400(url: str, tiny_model: Path) -> None:
    body = {"model_name": "t", "model_path": str(tiny_model), "worker": "no-such-worker"}
    error = assert_error(httpx.post(url + "/v1/models", json=body, timeout=10), 400)
    assert "no-such-worker" in error["message"]


def test_unknown_model_is_404(url: str) -> None:
    assert_error(httpx.get(url + "/v1/models/ghost"), 404)
    assert_error(httpx.post(url + CHAT, json={"model": "ghost", "messages": HI}), 404)


def test_unknown_route_and_wrong_method(url: str) -> None:
    assert_error(httpx.get(url + "/v1/nothing-here"), 404)
    assert_error(httpx.get(url + CHAT), 405)


def test_a_file_that_is_not_gguf_is_400(url: str, models_dir: Path) -> None:
    bogus = models_dir / "bogus.gguf"
    bogus.write_bytes(b"this is not a model" * 10)
    body = {"model_name": "bogus", "model_path": str(bogus)}
    error = assert_error(httpx.post(url + "/v1/models", json=body, timeout=30), 400)
    assert "GGUF" in error["message"]


def test_an_oversized_body_is_413(url: str) -> None:
    huge = b'{"model": "tiny", "prompt": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    response = httpx.post(
        url + "/v1/completions",
        content=huge,
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert_error(response, 413)


def test_every_protocol_error_code_has_one_status() -> None:
    for code in p.ErrorCode:
        error = APIError.from_code(code, "x")
        assert 400 <= error.status < 600 and error.code == code.value, code
    assert APIError.from_code(p.ErrorCode.LOAD_FAILED, "x").status == 400
    assert APIError.from_code(p.ErrorCode.MODEL_FAILED, "x").status == 500
