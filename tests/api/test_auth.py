"""API keys: who may call which route, how the clients send a key, and what is refused.

One broker takes three keys: an inference key and an admin key from a keys file, and a
full-access key from ``--api-key``; its output is kept, to show that no key reaches it.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from textual.widgets import DataTable, Static
from xinference_client import RESTfulClient

from tests.stack import Stack, free_port
from xb.api import auth
from xb.api.app import create_app
from xb.api.auth import (
    INFERENCE,
    OPEN,
    ROUTE_SCOPES,
    APIKeyError,
    APIKeys,
    RequireKey,
    RouteScopes,
    exposure_refusal,
    load_keys,
    parse_keys_file,
)
from xb.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ClientError,
    PermissionDeniedError,
)
from xb.tui.app import XbApp

pytestmark = pytest.mark.e2e

INFERENCE_KEY = "inference-key-for-tests-0123456789"
ADMIN_KEY = "admin-key-for-tests-abcdefghijklmn"
FULL_KEY = "full-key-from-the-command-line-0123"
WRONG_KEY = "wrong-key-that-looks-right-9876543"
KEYS = (INFERENCE_KEY, ADMIN_KEY, FULL_KEY, WRONG_KEY)
HI = [{"role": "user", "content": "hi"}]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, tiny_model: Path
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("keyed")
    keys_file = folder / "keys"
    keys_file.write_text(
        f"# the chat front end\n{INFERENCE_KEY}  inference\n\n{ADMIN_KEY} admin # operators\n"
    )
    keys_file.chmod(0o600)
    stack = Stack(
        home=folder / "home",
        broker_args=["--api-keys-file", str(keys_file), "--api-key", FULL_KEY],
        model_dirs=[models_dir],
        api_key=ADMIN_KEY,
        broker_log=folder / "broker.log",
    )
    with stack.running():
        stack.launch(model_name="tiny", model_path=str(tiny_model), n_ctx=256)
        yield stack


def assert_refused(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["detail"] == body["error"]["message"]  # where Xinference's client reads it
    assert not any(key in response.text for key in KEYS)
    return str(body["error"]["message"])


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer(WRONG_KEY),
        bearer(ADMIN_KEY + "x"),
        bearer(ADMIN_KEY[:-1]),
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"Authorization": ADMIN_KEY},
        {"X-Api-Key": ADMIN_KEY},
    ],
    ids=["none", "wrong", "longer", "shorter", "basic", "no-scheme", "other-header"],
)
def test_no_key_or_a_wrong_one_is_401_everywhere_but_health(
    keyed: Stack, headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=keyed.url, headers=headers, timeout=10) as http:
        for method, path, body in [
            ("GET", "/v1/models", None),
            ("POST", "/v1/chat/completions", {"model": "tiny", "messages": HI}),
            ("DELETE", "/v1/models/tiny", None),
            ("GET", "/v1/cluster/info", None),
            ("GET", "/metrics", None),
            ("GET", "/openapi.json", None),
        ]:
            response = http.request(method, path, json=body)
            message = assert_refused(response, 401, "invalid_api_key")
            assert "Authorization: Bearer" in message
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert http.get("/health").status_code == 200
        assert http.get("/v1/cluster/auth").json() == {"auth": True}
    models = httpx.get(keyed.url + "/v1/models", headers=bearer(ADMIN_KEY)).json()["data"]
    assert [m["id"] for m in models] == ["tiny"]  # the DELETE above did nothing


INFERENCE_CALLS = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/tiny", None),
    ("POST", "/v1/chat/completions", {"model": "tiny", "messages": HI, "max_tokens": 2}),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2}),
    ("POST", "/v1/embeddings", {"model": "tiny", "input": "hi"}),  # an LLM: 400, but let in
    ("GET", "/openapi.json", None),
]
ADMIN_CALLS = [
    ("POST", "/v1/models", {"model_name": "x", "model_path": "/nowhere.gguf"}),
    ("DELETE", "/v1/models/tiny", None),
    ("PUT", "/v1/models/tiny/replicas", {"replica": 2}),
    ("POST", "/v1/models/tiny/replicas", {}),
    ("POST", "/v1/models/tiny/cancel", None),
    ("GET", "/v1/models/tiny/progress", None),
    ("GET", "/v1/cluster/info", None),
    ("GET", "/v1/workers", None),
    ("GET", "/v1/supervisor", None),
    ("GET", "/v1/model_registrations/LLM", None),
    ("POST", "/v1/model_registrations/LLM", {"model": "{}"}),
    ("DELETE", "/v1/model_registrations/LLM/tiny-chat", None),
    ("GET", "/v1/engines/tiny", None),
    ("GET", "/metrics", None),
    ("GET", "/v1/usage", None),
]


def test_an_inference_key_chats_but_changes_nothing(keyed: Stack) -> None:
    with httpx.Client(base_url=keyed.url, headers=bearer(INFERENCE_KEY), timeout=30) as http:
        for method, path, body in INFERENCE_CALLS:
            response = http.request(method, path, json=body)
            assert response.status_code in (200, 400), (path, response.text)
        for method, path, body in ADMIN_CALLS:
            response = http.request(method, path, json=body)
            message = assert_refused(response, 403, "insufficient_scope")
            assert "admin scope" in message and path in message
    assert [r["model_uid"] for r in keyed.cluster()[0]["replicas"]] == ["tiny"]


@pytest.mark.parametrize("key", [ADMIN_KEY, FULL_KEY], ids=["admin", "full"])
def test_admin_and_full_keys_do_everything(keyed: Stack, key: str) -> None:
    with httpx.Client(base_url=keyed.url, headers=bearer(key), timeout=30) as http:
        for method, path, body in INFERENCE_CALLS + ADMIN_CALLS[-8:]:
            response = http.request(method, path, json=body)
            assert response.status_code not in (401, 403), (path, response.text)
        # The scheme is case-insensitive, as HTTP says.
        lower = http.get("/v1/cluster/info", headers={"Authorization": f"bearer {key}"})
        assert lower.status_code == 200


def test_the_openai_package_sends_its_api_key(keyed: Stack) -> None:
    client = keyed.openai_client(INFERENCE_KEY)
    answer = client.chat.completions.create(model="tiny", messages=HI, max_tokens=3)  # type: ignore[arg-type]
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("tiny")
    wrong = keyed.openai_client(WRONG_KEY)
    with pytest.raises(openai.AuthenticationError, match="not valid"):
        wrong.models.list()
    wrong.close()
    client.close()


def test_python_clients_take_a_key_or_xb_api_key(
    keyed: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XB_API_KEY", raising=False)
    with Client(keyed.url) as anonymous, pytest.raises(ClientError, match="needs a key") as caught:
        anonymous.list_models()
    assert caught.value.status == 401 and isinstance(caught.value, AuthenticationError)
    with Client(keyed.url, api_key=INFERENCE_KEY) as client:
        assert list(client.list_models()) == ["tiny"]
        with pytest.raises(ClientError, match="admin scope") as denied:
            client.get_workers_info()
        assert denied.value.status == 403 and isinstance(denied.value, PermissionDeniedError)
    monkeypatch.setenv("XB_API_KEY", ADMIN_KEY)
    with Client(keyed.url) as from_env:
        assert len(from_env.get_workers_info()) == 1

    async def asynchronous() -> tuple[list[str], int | None]:
        async with (
            AsyncClient(keyed.url) as from_env,
            AsyncClient(keyed.url, api_key=WRONG_KEY) as wrong,
        ):
            models = list(await from_env.list_models())
            try:
                await wrong.list_models()
            except AuthenticationError as exc:
                return models, exc.status_code
            return models, None

    assert asyncio.run(asynchronous()) == (["tiny"], 401)


def xb(stack: Stack, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**stack.env(), "COLUMNS": "200"}
    env.pop("XB_API_KEY", None)
    if key is not None:
        env["XB_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "xb.client", *args, "--endpoint", stack.url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_the_xb_command_takes_api_key_or_xb_api_key(keyed: Stack) -> None:
    anonymous = xb(keyed, "list", "--json")
    assert anonymous.returncode == 1
    assert "needs a key" in anonymous.stderr and "401" in anonymous.stderr
    assert '"tiny"' in xb(keyed, "list", "--json", "--api-key", INFERENCE_KEY).stdout
    assert '"tiny"' in xb(keyed, "list", "--json", key=INFERENCE_KEY).stdout
    denied = xb(keyed, "workers", key=INFERENCE_KEY)
    assert denied.returncode == 1 and "admin scope" in denied.stderr
    assert xb(keyed, "workers", "--api-key", ADMIN_KEY, key=INFERENCE_KEY).returncode == 0
    chat = xb(keyed, "chat", "tiny", "-m", "hi", "-n", "2", key=INFERENCE_KEY)
    assert chat.returncode == 0, chat.stderr


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_dashboard_sends_its_key(keyed: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XB_API_KEY", raising=False)
    for key, shown in [(ADMIN_KEY, "tiny"), (None, "needs a key")]:
        app = XbApp(keyed.url, api_key=key)
        async with app.run_test(size=(120, 36)) as pilot:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                status = str(app.cluster.query_one("#cluster-status", Static).render())
                models = [str(k.value) for k in app.cluster.query_one("#models", DataTable).rows]
                if shown in models or shown in status:
                    break
                await pilot.pause(0.05)
            else:
                raise AssertionError(f"the dashboard never showed {shown!r}: {status}")


def test_xinference_client_sends_its_api_key(keyed: Stack) -> None:
    client = RESTfulClient(keyed.url, api_key=ADMIN_KEY)
    assert list(client.list_models()) == ["tiny"]
    client.close()
    anonymous = RESTfulClient(keyed.url)
    with pytest.raises(RuntimeError, match="needs a key"):
        anonymous.list_models()
    anonymous.close()


def test_no_key_reaches_the_log(keyed: Stack) -> None:
    # Every key has been sent, right and wrong, by the tests above; send each once more.
    for key in KEYS:
        httpx.get(keyed.url + "/v1/models", headers=bearer(key), timeout=10)
    assert keyed.broker_log is not None
    log = keyed.broker_log.read_text(errors="replace")
    assert "OpenAI API on" in log  # the log is the broker's
    assert not [key for key in KEYS if key in log]


# ---- starting the broker ------------------------------------------------------------


def broker(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``xb-broker`` with ``args``, expected to refuse to start."""
    command = [sys.executable, "-m", "xb.broker", "--port", str(free_port()), *args]
    return subprocess.run(
        [*command, "--api-port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "XB_HOME": str(tmp_path)},
    )


def test_a_broker_without_keys_will_not_serve_beyond_loopback(tmp_path: Path) -> None:
    refused = broker(tmp_path, "--api-host", "0.0.0.0")
    assert refused.returncode != 0
    assert "without API keys" in refused.stderr
    assert "--api-key" in refused.stderr and "--insecure" in refused.stderr


def test_a_bad_keys_file_stops_the_broker_without_repeating_its_keys(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{INFERENCE_KEY} inference\n{ADMIN_KEY} root\n")
    refused = broker(tmp_path, "--api-keys-file", str(keys_file))
    assert refused.returncode != 0
    assert "line 2" in refused.stderr and "root" in refused.stderr
    assert INFERENCE_KEY not in refused.stderr and ADMIN_KEY not in refused.stderr


# ---- the rules, without processes -----------------------------------------------------


@pytest.mark.unit
def test_every_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = APIKeys([(ADMIN_KEY, frozenset(auth.SCOPES)), (INFERENCE_KEY, frozenset({"inference"}))])
    compared: list[bytes] = []
    original = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(a)
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    found = keys.find(ADMIN_KEY.encode())
    assert found is not None and found[0] == frozenset(auth.SCOPES)
    assert keys.find(WRONG_KEY.encode()) is None
    assert len(compared) == 4  # both keys, each time, whichever matched
    assert ADMIN_KEY not in repr(keys) and "2 keys" in repr(keys)


@pytest.mark.unit
def test_keys_file_format(tmp_path: Path) -> None:
    text = f"{INFERENCE_KEY} inference alice weight=3\n\n{ADMIN_KEY} admin,inference\n"
    last = f"{FULL_KEY} inference eval priority=batch rpm=20 tokens_per_day=100000\n"
    keys = parse_keys_file(text + last, "f")
    assert keys == [
        (INFERENCE_KEY, frozenset({"inference"}), auth.Tenant("alice", 3.0)),
        (ADMIN_KEY, frozenset({"inference", "admin"}), auth.Tenant("key-3")),
        (
            FULL_KEY,
            frozenset({"inference"}),
            auth.Tenant("eval", priority="batch", rpm=20, tokens_per_day=100_000),
        ),
    ]
    for bad in [
        f"{ADMIN_KEY}",
        f"{ADMIN_KEY} admin na/me",
        f"{ADMIN_KEY} admin alice weight=0",
        f"{ADMIN_KEY} admin alice priority=urgent",
        f"{ADMIN_KEY} admin alice colour=red",
        f"{ADMIN_KEY} admin alice rpm=-1",
        f"{ADMIN_KEY} admin alice rpm=1.5",
        f"{ADMIN_KEY} admin alice tokens_per_day=lots",
        f"{ADMIN_KEY} admin alice tokens_per_day={10**13}",
        "s3cret-short admin",
        f"{ADMIN_KEY} ,",
    ]:
        with pytest.raises(APIKeyError) as caught:
            parse_keys_file(bad, "f")
        assert ADMIN_KEY not in str(caught.value) and "s3cret" not in str(caught.value)
    with pytest.raises(APIKeyError, match="at least 16") as short:
        load_keys(["s3cret-short"], None)
    assert "s3cret" not in str(short.value)
    readable = tmp_path / "keys"
    readable.write_text(f"{ADMIN_KEY} admin\n")
    readable.chmod(0o644)
    keys_of_file, warnings = load_keys([FULL_KEY], readable)
    assert len(keys_of_file) == 2 and "chmod 600" in warnings[0]


@pytest.fixture
def keyed_app() -> Iterator[Callable[[], FastAPI]]:
    """Makes the facade with an inference key and an admin key, not started: its routes
    only (its bridge's socket is closed at the end)."""
    apps: list[FastAPI] = []

    def make() -> FastAPI:
        keys = APIKeys(
            [(INFERENCE_KEY, frozenset({INFERENCE})), (ADMIN_KEY, frozenset(auth.SCOPES))]
        )
        apps.append(create_app("tcp://127.0.0.1:1", api_keys=keys))
        return apps[-1]

    yield make
    for app in apps:
        asyncio.run(app.state.facade.bridge.close())


def declared_scopes(app: FastAPI) -> list[tuple[str, str, str | None]]:
    """Every route of ``app`` as FastAPI routes requests to them (included routers' too):
    each method, path and the scope declared with the route; FastAPI's own documentation
    pages are declared by ``RouteScopes``."""
    if hasattr(fastapi.routing, "iter_route_contexts"):  # routers included lazily
        routes = [c.original_route for c in fastapi.routing.iter_route_contexts(app.routes)]
    else:
        routes = list(app.routes)
    documentation = RouteScopes(app).exact
    found: list[tuple[str, str, str | None]] = []
    for route in routes:
        assert isinstance(route, Route), f"{route!r}: walk into it too"
        for method in sorted(route.methods or ()):
            if isinstance(route, APIRoute):
                declared = (route.openapi_extra or {}).get(auth.SCOPE_FIELD)
            else:
                declared = documentation.get(("GET" if method == "HEAD" else method, route.path))
            found.append((method, route.path, declared))
    return found


@pytest.mark.unit
def test_every_route_declares_one_scope(keyed_app: Callable[[], FastAPI]) -> None:
    found = declared_scopes(keyed_app())
    undeclared = [f"{m} {path}" for m, path, declared in found if declared not in ROUTE_SCOPES]
    assert not undeclared, f"give these routes openapi_extra=scope(...): {undeclared}"
    assert len(found) > 30 and {d for _, _, d in found} == set(ROUTE_SCOPES)
    assert ("POST", "/v1/embeddings", INFERENCE) in found
    assert ("GET", "/v1/cluster/auth", OPEN) in found
    # A route without one stops a facade with keys from starting.
    app = keyed_app()
    app.get("/v1/undeclared")(lambda: None)
    app.openapi_schema = None
    with pytest.raises(ValueError, match="GET /v1/undeclared declares no scope"):
        RouteScopes(app)


@pytest.mark.unit
def test_each_route_is_guarded_by_its_declared_scope(keyed_app: Callable[[], FastAPI]) -> None:
    """Every route, each key: no key reaches only the open routes; an inference key the
    open and inference ones; an admin key all. Checked in the guard alone, before routing."""
    app = keyed_app()

    async def reached(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("reached")(scope, receive, send)

    guard = RequireKey(reached, app.state.facade.api_keys, RouteScopes(app))
    allowed = {None: {OPEN}, INFERENCE_KEY: {OPEN, INFERENCE}, ADMIN_KEY: set(ROUTE_SCOPES)}

    async def status(method: str, path: str, key: str | None) -> int:
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://xb") as http:
            headers = bearer(key) if key else {}
            return (await http.request(method, path, headers=headers)).status_code

    async def check() -> None:
        for method, template, declared in declared_scopes(app):
            path = re.sub(r"\{[^/]+\}", "tiny", template)
            for key, scopes in allowed.items():
                expected = 200 if declared in scopes else 401 if key is None else 403
                got = await status(method, path, key)
                assert got == expected, (method, path, key and key[:9], declared)

    asyncio.run(check())


@pytest.mark.unit
def test_scopes_of_routes_and_exposure(keyed_app: Callable[[], FastAPI]) -> None:
    scopes = RouteScopes(keyed_app())
    assert scopes.needed("GET", "/health") is None
    assert scopes.needed("OPTIONS", "/v1/models/tiny") is None
    assert scopes.needed("POST", "/v1/chat/completions") == "inference"
    assert scopes.needed("HEAD", "/v1/models") == "inference"
    assert scopes.needed("POST", "/v1/models") == "admin"
    assert scopes.needed("GET", "/v1/models/tiny/progress") == "admin"
    assert scopes.needed("GET", "/v1/some-future-route") == "admin"  # no route: says nothing
    assert scopes.needed("GET", "/openapi.json") == "inference"
    none, some = APIKeys(), APIKeys([(ADMIN_KEY, frozenset(auth.SCOPES))])
    for host in ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]:
        assert exposure_refusal(host, none, insecure=False) is None
    for host in ["0.0.0.0", "::", "192.168.1.5", "my-host.example"]:
        assert exposure_refusal(host, none, insecure=False) is not None
        assert exposure_refusal(host, none, insecure=True) is None
        assert exposure_refusal(host, some, insecure=False) is None
