"""API keys: who may call which route.

Every route declares the scope it needs where it is declared, as
``@router.get(path, openapi_extra=scope(INFERENCE))``: ``open`` (no key), ``inference`` or
``admin``. The scope is part of the route's OpenAPI operation (``x-xb-scope``), so
``/openapi.json`` shows it, and ``RequireKey`` reads its table from there once.

Keys come from ``xb-broker --api-key KEY`` (repeatable; full access) and
``--api-keys-file FILE``: one key a line, then its scopes, comma-separated, then
optionally the name of who uses it and their settings::

    # comments and blank lines are ignored
    k3y-for-the-chat-frontend-0123456789    inference
    k3y-for-the-operators-abcdefghijklmn    admin
    k3y-for-alices-scripts-0123456789ab     inference  alice    weight=3
    k3y-for-the-nightly-evaluation-xyz0     inference  eval     priority=batch
    k3y-for-bobs-notebook-0123456789abc     inference  bob      rpm=20 tokens_per_day=100000

The name is the key's tenant: the broker takes turns between tenants (``weight``: its
share of the slots against the others', 1 by default; ``priority``: its requests'
default, ``interactive`` or ``batch``). A key without a name is the tenant ``key-N``
(line N of the file); the Nth ``--api-key`` is ``api-key-N``. The broker sees names,
never keys.

Quotas (none by default): ``rpm=N``, requests per minute, in a sliding 60 s window;
``tokens_per_day=N``, prompt and completion tokens per UTC day. The facade sends them
with each request and the broker counts (``broker/quotas.py``), so facades in front of
one broker share the counts; a request over either is a 429 with ``Retry-After``. Each
choice of ``n`` and each prompt of a list counts as one request. Keys that share a name
share its counts.

``inference`` may chat, complete, embed, list the models and describe one (what the
openai package and Xinference's ``get_model`` need); ``admin`` may do everything, which
is what an ``--api-key`` key gets. A request sends its key as ``Authorization: Bearer
KEY``, as the openai package does. Without any key configured the API takes no keys,
and ``xb-broker`` serves it on loopback only (``exposure_refusal``).

A presented key is compared with every configured key in constant time, and keys appear
in no log line, error message or ``repr``.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from xb.api.errors import APIError
from xb.core.errors import XbError
from xb.core.protocol import Priority

RouteScope = Literal["open", "inference", "admin"]
OPEN: RouteScope = "open"
INFERENCE: RouteScope = "inference"
ADMIN: RouteScope = "admin"
SCOPES = (INFERENCE, ADMIN)  # what a key may hold
ROUTE_SCOPES = (OPEN, INFERENCE, ADMIN)  # what a route may need
SCOPE_FIELD = "x-xb-scope"
MIN_KEY_LENGTH = 16
_KEY = re.compile(rb"^[\x21-\x7e]+$")  # visible ASCII: what a header can carry as it is
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
TENANT_STATE = "xb_tenant"  # where RequireKey leaves the key's tenant for the routes
SETTINGS = ("weight", "priority", "rpm", "tokens_per_day")
MAX_QUOTA = 10**12  # far above any real quota; the protocol holds 2**50


def scope(needed: RouteScope) -> dict[str, Any]:
    """A route's scope, for its ``openapi_extra``: ``open`` for a load balancer's health
    check and the question Xinference's client asks before it sends its key; ``inference``
    for what a chat front end calls; ``admin`` for everything else."""
    return {SCOPE_FIELD: needed}


class APIKeyError(XbError):
    """A key or a keys file xb cannot use; the message says why, never the key."""


@dataclass(frozen=True)
class Tenant:
    """Who a key belongs to, for fair turns: its name, its weight against the others',
    and the priority its requests have unless they say another."""

    name: str
    weight: float = 1.0
    priority: Priority = "interactive"
    rpm: int = 0  # requests per minute; 0: no quota
    tokens_per_day: int = 0  # prompt and completion tokens per UTC day; 0: no quota


Key = tuple[str, frozenset[str], Tenant]  # the key, its scopes, its tenant


class APIKeys:
    """The configured keys, each with its scopes and its tenant."""

    def __init__(self, keys: Iterable[Key | tuple[str, frozenset[str]]] = ()) -> None:
        self._keys = [
            (entry[0].encode(), entry[1], entry[2] if len(entry) == 3 else Tenant(f"key-{n}"))
            for n, entry in enumerate(keys, 1)
        ]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"APIKeys({len(self._keys)} keys)"

    def find(self, presented: bytes) -> tuple[frozenset[str], Tenant] | None:
        """The scopes and tenant of ``presented``, or None if it is no key. Every
        configured key is compared, in constant time, so the time taken says nothing
        about which matched."""
        found: tuple[frozenset[str], Tenant] | None = None
        for key, scopes, tenant in self._keys:
            if hmac.compare_digest(key, presented):
                found = (scopes, tenant)
        return found


def _check_key(key: str, where: str) -> None:
    if not _KEY.match(key.encode()) or len(key) < MIN_KEY_LENGTH:
        raise APIKeyError(
            f"{where}: an API key is at least {MIN_KEY_LENGTH} visible ASCII characters, "
            "with no spaces (make one with: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )


def parse_keys_file(text: str, name: str) -> list[Key]:
    """The keys of a keys file (format in the module docstring)."""
    keys: list[Key] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{name} line {number}"
        if len(fields) < 2:
            raise APIKeyError(f"{where}: write the key, then its scopes ({', '.join(SCOPES)})")
        key, scope_list, *rest = fields
        _check_key(key, where)
        scopes = frozenset(s for s in scope_list.split(",") if s)
        unknown = scopes - set(SCOPES)
        if unknown or not scopes:
            raise APIKeyError(f"{where}: unknown scope {sorted(unknown)}; use {', '.join(SCOPES)}")
        tenant = _tenant(rest, f"key-{number}", where)
        keys.append((key, scopes | ({INFERENCE} if ADMIN in scopes else set()), tenant))
    return keys


def _tenant(fields: list[str], default: str, where: str) -> Tenant:
    """A key's tenant from the fields after its scopes: a name, then settings."""
    name = default
    if fields and "=" not in fields[0]:
        name, *fields = fields
        if not _TENANT.match(name):
            raise APIKeyError(
                f"{where}: a key's name is 1 to 64 letters, digits, '.', '_', '@' or '-'"
            )
    settings: dict[str, str] = {}
    for field in fields:
        setting, _, value = field.partition("=")
        if setting not in SETTINGS or not value:
            raise APIKeyError(
                f"{where}: {setting!r} is not a key setting; use weight=N, priority=batch, "
                "rpm=N or tokens_per_day=N"
            )
        settings[setting] = value
    try:
        weight = float(settings.get("weight", "1"))
    except ValueError:
        weight = 0.0
    if not 0.01 <= weight <= 1000:
        raise APIKeyError(f"{where}: weight is a number from 0.01 to 1000")
    priority = settings.get("priority", "interactive")
    if priority not in PRIORITIES:
        raise APIKeyError(f"{where}: priority is one of {', '.join(PRIORITIES)}")
    rpm, tokens_per_day = (_quota(settings, q, where) for q in ("rpm", "tokens_per_day"))
    return Tenant(name, weight, priority, rpm, tokens_per_day)


def _quota(settings: dict[str, str], name: str, where: str) -> int:
    value = settings.get(name, "0")
    if not value.isdigit() or not 0 <= int(value) <= MAX_QUOTA:
        raise APIKeyError(f"{where}: {name} is a whole number from 1 to {MAX_QUOTA} (0: none)")
    return int(value)


def load_keys(full_access: Iterable[str], keys_file: Path | None) -> tuple[APIKeys, list[str]]:
    """The keys given on the command line and in ``keys_file``; and warnings to log (a
    keys file others can read)."""
    keys: list[Key] = []
    for i, key in enumerate(full_access, 1):
        _check_key(key, f"--api-key number {i}")
        keys.append((key, frozenset(SCOPES), Tenant(f"api-key-{i}")))
    warnings: list[str] = []
    if keys_file is not None:
        try:
            text = keys_file.read_text()
            mode = keys_file.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise APIKeyError(f"cannot read the keys file {keys_file}: {exc}") from exc
        keys += parse_keys_file(text, str(keys_file))
        if not keys:
            raise APIKeyError(f"the keys file {keys_file} holds no key")
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            warnings.append(f"{keys_file} can be read by other users; chmod 600 it")
    return APIKeys(keys), warnings


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only. A name other than
    localhost counts as reachable from elsewhere: names can change what they resolve to."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_refusal(api_host: str, keys: APIKeys, insecure: bool) -> str | None:
    """Why the API must not be served on ``api_host``, or None when it may."""
    if keys.enabled or insecure or is_loopback(api_host):
        return None
    return (
        f"refusing to serve the API on {api_host} without API keys: anyone who can reach it "
        "could launch and terminate models and read every prompt. Give --api-key KEY or "
        "--api-keys-file FILE, or --insecure to serve it without keys anyway"
    )


class RouteScopes:
    """The scope each route of an app needs, looked up by method and path before routing.

    Read from the OpenAPI schema, the one public list of every route (included routers'
    too), and FastAPI's documentation pages, which are not in it: an inference key may
    read them, as the schema of the routes it calls. A path no route matches needs admin,
    so a caller without a key learns nothing of which paths exist."""

    def __init__(self, app: FastAPI) -> None:
        self.exact: dict[tuple[str, str], RouteScope] = {}
        self.templated: list[tuple[str, re.Pattern[str], RouteScope]] = []
        for page in (app.openapi_url, app.docs_url, app.redoc_url):
            if page is not None:
                self.exact["GET", page] = INFERENCE
        if app.docs_url is not None and app.swagger_ui_oauth2_redirect_url is not None:
            self.exact["GET", app.swagger_ui_oauth2_redirect_url] = INFERENCE  # of /docs
        for template, operations in app.openapi()["paths"].items():
            for method, operation in operations.items():
                needed = operation.get(SCOPE_FIELD)
                if needed not in ROUTE_SCOPES:
                    raise ValueError(
                        f"{method.upper()} {template} declares no scope: give its route "
                        f"openapi_extra=scope(...) with one of {', '.join(ROUTE_SCOPES)}"
                    )
                if "{" in template:
                    pattern = re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$")
                    self.templated.append((method.upper(), pattern, needed))
                else:
                    self.exact[method.upper(), template] = needed

    def needed(self, method: str, path: str) -> str | None:
        """The scope a request needs; None for the open routes."""
        method = "GET" if method == "HEAD" else method
        if method == "OPTIONS":
            return None  # OPTIONS says which methods a path has, as a 404 says it has none
        needed = self.exact.get((method, path))
        if needed is None:
            needed = next(
                (s for m, pattern, s in self.templated if m == method and pattern.match(path)),
                ADMIN,
            )
        return None if needed == OPEN else needed


class RequireKey:
    """Refuse a request without a key that has the scope its route needs: 401 without a
    valid key, 403 with a key that lacks the scope. Plain ASGI, and before the body is
    read, so a caller without a key cannot make the facade read 16 MiB."""

    def __init__(self, app: ASGIApp, keys: APIKeys, scopes: RouteScopes) -> None:
        self.app = app
        self.keys = keys
        self.scopes = scopes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled:
            await self.app(scope, receive, send)
            return
        needed = self.scopes.needed(scope["method"], scope["path"])
        refusal = None if needed is None else self._refusal(scope, needed)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        response = refusal.response()
        if refusal.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="xb"'
        await response(scope, receive, send)

    def _refusal(self, scope: Scope, needed: str) -> APIError | None:
        header = dict(scope["headers"]).get(b"authorization", b"")
        kind, _, presented = header.partition(b" ")
        if not header:
            return APIError(
                401,
                "this API needs a key: send it as 'Authorization: Bearer KEY' (xb and its "
                "clients: --api-key or XB_API_KEY)",
                code="invalid_api_key",
            )
        found = self.keys.find(presented.strip()) if kind.lower() == b"bearer" else None
        if found is None:
            return APIError(
                401,
                "the API key is not valid: send one of the broker's keys as "
                "'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )
        scopes, tenant = found
        scope.setdefault("state", {})[TENANT_STATE] = tenant  # read by ``tenant_of``
        if needed not in scopes:
            return APIError(
                403,
                f"this key may not call {scope['method']} {scope['path']}: that needs a key "
                f"with the {needed} scope",
                code="insufficient_scope",
            )
        return None


def quotas_of(state: dict[str, Any]) -> tuple[int, int]:
    """The requests per minute and tokens per day of the request's key (0: none); a
    request without a key has none. ``state``: the request scope's."""
    tenant: Tenant | None = state.get(TENANT_STATE)
    return (tenant.rpm, tenant.tokens_per_day) if tenant is not None else (0, 0)


def tenant_of(
    state: dict[str, Any], user: str | None, asked: Priority | None
) -> tuple[str, Priority, float]:
    """Who a request is from, for the broker's fair turns, and its priority and weight:
    the key's tenant when the API takes keys, else the OpenAI ``user`` field when the
    request gives one, else the one shared tenant (""). ``state``: the request scope's."""
    tenant: Tenant | None = state.get(TENANT_STATE)
    if tenant is not None:
        return tenant.name, asked or tenant.priority, tenant.weight
    return (user or "")[:128], asked or "interactive", 1.0
