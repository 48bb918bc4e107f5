"""What each client method sends and how its answer reads, shared by both clients.

Each API call is a ``Call``; ``Client`` (blocking) and ``AsyncClient`` (asyncio) only
differ in how they carry it out.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from xb.client.errors import APIStreamError, status_error

API_KEY_ENV = "XB_API_KEY"
QUEUED_COMMENT = ": queued, position "  # an SSE comment a waiting stream gets
OnQueued = Callable[[int], None]  # called with a waiting stream's place in line, 1 next


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The bearer header for ``api_key``, else for ``$XB_API_KEY``; none without a key."""
    key = api_key or os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def http_options(base_url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    """The keyword arguments of the httpx client either client runs on."""
    return {"base_url": base_url, "headers": auth_headers(api_key), "timeout": timeout}


def answer(call: Call, response: httpx.Response) -> Any:
    """What ``call`` returns, read from its whole response; a status error instead."""
    if response.status_code >= 400:
        raise status_error(response)
    return call.read(response.json())


def _identity(body: Any) -> Any:
    return body


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: dict[str, Any] | None = None
    read: Callable[[Any], Any] = field(default=_identity)
    on_queued: OnQueued | None = None  # a stream's places in line while it waits


def launch(model_name: str, fields: dict[str, Any]) -> Call:
    body = {"model_name": model_name, **{k: v for k, v in fields.items() if v is not None}}
    return Call("POST", "/v1/models", body, lambda r: str(r["model_uid"]))


def list_models() -> Call:
    return Call("GET", "/v1/models", read=lambda r: {m["id"]: m for m in r["data"]})


def describe(uid: str) -> Call:
    return Call("GET", f"/v1/models/{uid}")


def terminate(uid: str) -> Call:
    return Call("DELETE", f"/v1/models/{uid}", read=lambda r: None)


def progress(uid: str) -> Call:
    return Call("GET", f"/v1/models/{uid}/progress")


def cancel(uid: str) -> Call:
    return Call("POST", f"/v1/models/{uid}/cancel", read=lambda r: None)


def scale(uid: str, replica: int) -> Call:
    return Call("PUT", f"/v1/models/{uid}/replicas", {"replica": replica})


def cluster() -> Call:
    return Call("GET", "/v1/cluster/info")


def usage(since: float | None, start: float | None, end: float | None) -> Call:
    window = {"since": since, "start": start, "end": end}
    query = urllib.parse.urlencode({k: v for k, v in window.items() if v is not None})
    return Call("GET", "/v1/usage" + (f"?{query}" if query else ""))


def chat(
    uid: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    config: dict[str, Any] | None,
    on_queued: OnQueued | None = None,
) -> Call:
    body: dict[str, Any] = {"model": uid, "messages": messages, **(config or {})}
    if tools:
        body["tools"] = tools
    return Call("POST", "/v1/chat/completions", body, on_queued=on_queued)


def generate(
    uid: str, prompt: str, config: dict[str, Any] | None, on_queued: OnQueued | None = None
) -> Call:
    body = {"model": uid, "prompt": prompt, **(config or {})}
    return Call("POST", "/v1/completions", body, on_queued=on_queued)


def embed(uid: str, input: str | list[str], fields: dict[str, Any]) -> Call:
    return Call("POST", "/v1/embeddings", {"model": uid, "input": input, **fields})


def registrations(model_type: str) -> Call:
    return Call("GET", f"/v1/model_registrations/{model_type}")


def registration(model_type: str, name: str) -> Call:
    return Call("GET", f"/v1/model_registrations/{model_type}/{name}")


def register(model_type: str, family: str, persist: bool) -> Call:
    body = {"model": family, "persist": persist}
    return Call("POST", f"/v1/model_registrations/{model_type}", body, read=lambda r: None)


def unregister(model_type: str, name: str) -> Call:
    return Call("DELETE", f"/v1/model_registrations/{model_type}/{name}", read=lambda r: None)


def streaming(call: Call) -> bool:
    return bool(call.json and call.json.get("stream"))


def chunk(line: str) -> dict[str, Any] | None:
    """The chunk one SSE line carries; None for comments, blank lines and the end marker."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return None
    value: dict[str, Any] = json.loads(line[6:])
    if "error" in value:
        raise APIStreamError(value["error"])
    return value


def read_line(call: Call, line: str) -> dict[str, Any] | None:
    """``chunk(line)``, and a place in line handed to ``call.on_queued`` on the way."""
    if call.on_queued is not None and line.startswith(QUEUED_COMMENT):
        place = line[len(QUEUED_COMMENT) :]
        if place.isdigit():
            call.on_queued(int(place))
        return None
    return chunk(line)


def ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    if 10 <= number % 100 <= 20:
        return f"{number}th"
    return f"{number}{({1: 'st', 2: 'nd', 3: 'rd'}).get(number % 10, 'th')}"


def waiting_text(position: int) -> str:
    """What a waiting stream shows: "waiting (3rd in line)"."""
    return f"waiting ({ordinal(position)} in line)"


def progress_text(state: dict[str, Any]) -> str:
    """A launch's progress (from ``get_launch_model_progress``) in a few words."""
    download = state.get("download")
    if state["stage"] == "downloading" and download:
        mib = 1024**2
        return (
            f"downloading {download['done'] / mib:.1f} of {download['total'] / mib:.1f} MiB "
            f"at {download['rate'] / mib:.1f} MiB/s"
        )
    replicas = state["replicas"]
    return f"{state['stage']} · replicas ready {replicas['ready']}/{replicas['total']}"
