"""schemathesis against the facade's own OpenAPI schema: whatever it sends, every
operation answers below 500. Without API keys, and with keys (sending the admin key).

The examples are few and derived from a fixed seed (``derandomize``), so the suite takes
seconds and fails the same way twice; ``XB_FUZZ_EXAMPLES=500`` searches harder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import Case

from tests.stack import Stack

pytestmark = pytest.mark.e2e
EXAMPLES = int(os.environ.get("XB_FUZZ_EXAMPLES", "12"))
KEY = "fuzzing-key-0123456789abcdefghij"
MAX_TOKENS = 8
INFERENCE = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def load(stack: Stack, tiny_model: Path) -> Any:
    stack.launch(model_name="tiny", model_path=str(tiny_model), n_ctx=256)
    schema = schemathesis.openapi.from_url(
        stack.url + "/openapi.json", headers=stack.headers(), timeout=10
    )
    schema.config.generation.update(modes=list(schemathesis.GenerationMode))
    return schema


@pytest.fixture(scope="module")
def open_stack(module_stack: Stack) -> Stack:
    return module_stack


@pytest.fixture(scope="module")
def open_api(open_stack: Stack, tiny_model: Path) -> Any:
    return load(open_stack, tiny_model)


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    stack = Stack(
        home=tmp_path_factory.mktemp("xbhome"),
        broker_args=["--api-key", KEY],
        model_dirs=[models_dir],
        api_key=KEY,
    )
    with stack.running():
        yield stack


@pytest.fixture(scope="module")
def keyed_api(keyed_stack: Stack, tiny_model: Path) -> Any:
    schema = load(keyed_stack, tiny_model)
    # The keys are the only difference: random examples, without the boundary values of
    # every field (schemathesis's coverage phase), which the open API's run sends.
    schema.config.phases.coverage.enabled = False
    return schema


def call(case: Case, stack: Stack) -> None:
    """Send ``case`` and fail on any 5xx. An inference request goes to the running model,
    so that it gets past the model lookup, and answers in a few tokens, so that the fuzz
    stays quick (limits beyond 64 bits and the like are still sent as generated)."""
    body = case.body
    if case.path in INFERENCE and isinstance(body, dict) and "model" in body:
        body["model"] = "tiny"
        tokens = body.get("max_tokens", MAX_TOKENS + 1)
        if type(tokens) is int and MAX_TOKENS < tokens < 2**63:
            body["max_tokens"] = MAX_TOKENS
    response = case.call(base_url=stack.url, headers=stack.headers(), timeout=60)
    assert response.status_code < 500, (
        f"{case.as_curl_command(headers=stack.headers())}\n"
        f"-> {response.status_code} {response.text[:1000]}"
    )


open_schema = schemathesis.pytest.from_fixture("open_api")
keyed_schema = schemathesis.pytest.from_fixture("keyed_api")


@open_schema.parametrize()
@FUZZ
def test_no_input_is_a_server_error(case: Case, open_stack: Stack) -> None:
    call(case, open_stack)


@keyed_schema.parametrize()
@FUZZ
def test_no_input_is_a_server_error_with_keys(case: Case, keyed_stack: Stack) -> None:
    call(case, keyed_stack)
