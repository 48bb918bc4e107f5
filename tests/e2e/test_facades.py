"""Facades on their own (xb-api): several serve one broker, from its home or another."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.stack import Stack, free_port
from xb.core.keys import allow, keys_dir, peer_keys

pytestmark = pytest.mark.e2e


def chat(url: str, model: str, text: str) -> openai.types.chat.ChatCompletion:
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=4
        )


def test_two_facades_serve_one_broker(
    make_stack: Callable[..., Stack], tiny_model: Path, tmp_path: Path
) -> None:
    stack = make_stack(1)
    # One facade with the broker's home (it needs nothing), one as if on another host:
    # its own home, the broker's public key given, and its own key allowed by the broker.
    here = stack.add_facade()
    elsewhere_home = tmp_path / "elsewhere"
    broker_key = str(keys_dir(stack.home) / "broker.key")
    own = peer_keys(elsewhere_home, broker_key).own  # what xb-api makes there on its start
    allow(stack.home, own.public.decode(), "facade-elsewhere")  # xb keys allow, on the broker
    elsewhere = stack.add_facade("--broker-key", broker_key, home=elsewhere_home)
    launched = httpx.post(
        here + "/v1/models",
        json={"model_name": "tiny", "model_path": str(tiny_model)},
        timeout=60,
    )
    assert launched.status_code == 200, launched.text
    uid = launched.json()["model_uid"]

    for i, url in enumerate((here, elsewhere, stack.url)):
        reply = chat(url, uid, f"hello {i}")
        assert reply.usage is not None and reply.usage.completion_tokens == 4
    # What one facade launched, every facade lists: the broker holds it, not the facade.
    listed = [httpx.get(url + "/v1/models", timeout=5).json() for url in (here, elsewhere)]
    assert [[m["id"] for m in models["data"]] for models in listed] == [[uid], [uid]]

    # A family registered through the facade elsewhere is the broker's: the facade here
    # lists it and launches it by name; unregistered through here, it is gone there too.
    family = {
        "version": 1,
        "model_name": "tiny-family",
        "model_type": "LLM",
        "model_ability": ["chat"],
        "model_specs": [
            {
                "model_format": "gguf",
                "model_size_in_billions": 0.001,
                "quantizations": ["f16"],
                "model_uri": str(tiny_model),
            }
        ],
    }
    registered = httpx.post(
        elsewhere + "/v1/model_registrations/LLM", json={"model": family}, timeout=10
    )
    assert registered.status_code == 200, registered.text
    names = [r["model_name"] for r in httpx.get(here + "/v1/model_registrations/LLM").json()]
    assert "tiny-family" in names
    by_name = httpx.post(here + "/v1/models", json={"model_name": "tiny-family"}, timeout=60)
    assert by_name.status_code == 200, by_name.text
    gone = httpx.delete(here + "/v1/model_registrations/LLM/tiny-family", timeout=10)
    assert gone.status_code == 200, gone.text
    names = [r["model_name"] for r in httpx.get(elsewhere + "/v1/model_registrations/LLM").json()]
    assert "tiny-family" not in names
    assert not (elsewhere_home / "registrations").exists()  # nothing kept by the facade


def test_xb_api_refuses_a_host_others_reach_without_keys(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "xb.api", "--host", "0.0.0.0", "--port", str(free_port())],
        env={**os.environ, "XB_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "xb-api: refusing to serve the API on 0.0.0.0 without API keys" in done.stderr
