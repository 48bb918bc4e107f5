"""One stack for the conformance tests, every file of them: the model is launched one
sequence at a time, then four at once, and every test runs on both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.stack import Stack


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    """One broker and one worker, shared by the package's tests."""
    stack = Stack(home=tmp_path_factory.mktemp("xbhome"), model_dirs=[models_dir])
    with stack.running():
        yield stack


@pytest.fixture(scope="package", params=[1, 4], ids=lambda n: f"n_parallel={n}")
def client(
    stack: Stack, tiny_model: Path, request: pytest.FixtureRequest
) -> Iterator[openai.OpenAI]:
    """'tiny' (chat and completions) and 'embed' (an embedding model) launched, with
    ``request.param`` sequences at once."""
    stack.launch(
        model_name="tiny", model_path=str(tiny_model), n_ctx=1024, n_parallel=request.param
    )
    stack.launch(
        model_name="tiny", model_path=str(tiny_model), model_uid="embed", model_type="embedding"
    )
    with stack.openai_client() as client:
        yield client
    for uid in ("tiny", "embed"):
        httpx.delete(f"{stack.url}/v1/models/{uid}", timeout=30)
