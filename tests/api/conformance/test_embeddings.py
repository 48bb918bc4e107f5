"""Embeddings: floats and base64, and the abilities a model's type gives it."""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import pytest

from tests.api.conformance.shared import chat
from xb.core.demo_model import DemoModelConfig

pytestmark = pytest.mark.e2e


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model="embed", input=["one", "two words"])
    assert [d.index for d in floats.data] == [0, 1]
    vectors = [d.embedding for d in floats.data]
    assert len(vectors[0]) == DemoModelConfig().n_embd
    assert vectors[0] != vectors[1]
    for vector in vectors:
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-3  # normalised
    assert floats.usage.prompt_tokens > 2
    single = client.embeddings.create(model="embed", input="one")
    assert single.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)
    raw = httpx.post(
        str(client.base_url) + "embeddings",
        json={"model": "embed", "input": "one", "encoding_format": "base64"},
    ).json()
    decoded = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(decoded) // 4}f", decoded)) == pytest.approx(vectors[0])


def test_abilities_are_checked(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="cannot chat"):
        chat(client, model="embed")
    with pytest.raises(openai.BadRequestError, match="cannot embed"):
        client.embeddings.create(model="tiny", input="x")
    models = {m.id: m for m in client.models.list().data}
    assert models["embed"].model_extra["abilities"] == ["embed"]
    assert models["embed"].model_extra["model_type"] == "embedding"
