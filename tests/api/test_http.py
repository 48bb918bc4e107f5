"""HTTP around the routes: HEAD and OPTIONS everywhere, CORS only for the origins named."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.stack import Stack

pytestmark = pytest.mark.e2e

APP = "http://app.test"
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def test_head_and_options_answer_on_every_route(make_stack: Callable[..., Stack]) -> None:
    url = make_stack(0).url
    head = httpx.head(url + "/health")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(httpx.get(url + "/health").content)
    assert httpx.head(url + "/v1/models").status_code == 200
    options = httpx.options(url + "/v1/chat/completions")
    assert options.status_code == 204
    assert options.headers["allow"] == "OPTIONS, POST"
    models = httpx.options(url + "/v1/models")
    assert set(models.headers["allow"].split(", ")) == {"GET", "HEAD", "OPTIONS", "POST"}
    missing = httpx.options(url + "/v1/nowhere")
    assert missing.status_code == 404 and "/v1/nowhere" in missing.json()["error"]["message"]
    # Without --cors-origin, browsers on other origins get no permission.
    plain = httpx.get(url + "/health", headers={"Origin": APP})
    assert "access-control-allow-origin" not in plain.headers
    preflight = httpx.options(url + "/v1/chat/completions", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_for_the_origins_named(make_stack: Callable[..., Stack]) -> None:
    url = make_stack(0, "--cors-origin", APP, "--cors-origin", "http://other.test").url
    preflight = httpx.options(url + "/v1/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == APP
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    plain = httpx.get(url + "/v1/models", headers={"Origin": "http://other.test"})
    assert plain.headers["access-control-allow-origin"] == "http://other.test"
    # Errors carry the header too, so a page can read the OpenAI error object.
    missing = httpx.get(url + "/v1/models/ghost", headers={"Origin": APP})
    assert missing.status_code == 404
    assert missing.headers["access-control-allow-origin"] == APP
    stranger = httpx.get(url + "/v1/models", headers={"Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in stranger.headers
    refused = httpx.options(
        url + "/v1/chat/completions", headers={**PREFLIGHT, "Origin": "http://evil.test"}
    )
    assert refused.status_code == 400
    assert "origin" in refused.json()["error"]["message"]
