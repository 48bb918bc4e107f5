"""Clients that keep a stack busy while the chaos tests break it, and what they saw.

Every request ends in one of four ways: completed (a 200 with a whole answer, or a stream
that finished and sent ``[DONE]``), failed with a clear error (a 4xx/5xx with the OpenAI
error object, or a stream's error event), hung (no end within the client's timeout), or
broken (anything else: a connection cut without a response, a stream that stopped
without ``[DONE]`` or an error, a body that is not the error object).
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

from tests.stack import Stack

CLIENT_TIMEOUT = 30.0  # seconds a request may take on the client's side, then it hung


@dataclass
class Tally:
    sent: int = 0
    completed: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    hung: int = 0
    broken: list[tuple[float, str]] = field(default_factory=list)  # (when, what)

    @property
    def failures(self) -> int:
        return sum(self.failed.values())

    def summary(self) -> str:
        return (
            f"sent {self.sent}, completed {self.completed}, failed with a clear error "
            f"{self.failures}, hung {self.hung}, broken {len(self.broken)}"
        )


class Outcome(Exception):
    """How one request ended, other than completed."""


class Failed(Outcome):
    pass


class Broken(Outcome):
    pass


def _error_of(response: httpx.Response) -> str:
    """The failure's description, if the body is the OpenAI error object; else Broken."""
    try:
        error = response.json()["error"]
        message = error["message"]
    except (ValueError, KeyError, TypeError):
        text = response.text[:200]
        raise Broken(f"{response.status_code} without an error object: {text!r}") from None
    if not isinstance(message, str) or not message:
        raise Broken(f"{response.status_code} with an empty error message")
    return f"{response.status_code} {error.get('code')}: {_shape(message)}"


def _shape(message: str) -> str:
    """A message with its ids cut off, so that alike failures count together."""
    return message[:90]


def _stream(client: httpx.Client, body: dict[str, Any], deadline: float) -> None:
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            raise Failed(_error_of(response))
        finished = False
        for line in response.iter_lines():
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("the stream went on past the client's timeout")
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                if finished:
                    return
                raise Broken("[DONE] before any finish_reason")
            event = json.loads(data)
            if "error" in event:
                message = event["error"].get("message")
                if not message:
                    raise Broken(f"an error event without a message: {data[:200]}")
                raise Failed(f"stream error {event['error'].get('code')}: {_shape(message)}")
            finished = finished or any(c.get("finish_reason") for c in event["choices"])
        raise Broken("the stream ended without [DONE] or an error event")


def _whole(client: httpx.Client, body: dict[str, Any]) -> None:
    response = client.post("/v1/chat/completions", json=body)
    if response.status_code != 200:
        raise Failed(_error_of(response))
    answer = response.json()
    if not answer["choices"] or answer["choices"][0]["finish_reason"] not in ("stop", "length"):
        raise Broken(f"a 200 without a finished answer: {response.text[:200]!r}")


class Load:
    """``clients`` threads, each sending one request after another to ``model`` until
    ``stop``: every other one streamed, a few tokens each."""

    def __init__(
        self,
        stack: Stack,
        model: str,
        clients: int = 16,
        max_tokens: tuple[int, int] = (4, 24),
        extra: dict[str, Any] | None = None,
    ) -> None:
        """``extra``: fields every request's body adds (``user``, ``priority``...)."""
        self.stack, self.model, self.clients = stack, model, clients
        self.max_tokens = max_tokens
        self.extra = extra or {}
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"chaos-client-{i}", daemon=True)
            for i in range(clients)
        ]
        self.started = 0.0

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Tally:
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT + 10)
            assert not thread.is_alive(), f"{thread.name} did not stop"
        return self.tally

    def completed(self) -> int:
        with self._lock:
            return self.tally.completed

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(
            base_url=self.stack.url, timeout=CLIENT_TIMEOUT, headers=self.stack.headers()
        ) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                body = {
                    "model": self.model,
                    "messages": [{"role": "user", "content": f"client {index} question {n}"}],
                    "max_tokens": rng.randint(*self.max_tokens),
                    "stream": n % 2 == 0,
                    **self.extra,
                }
                self._one(client, body)

    def _one(self, client: httpx.Client, body: dict[str, Any]) -> None:
        with self._lock:
            self.tally.sent += 1
        try:
            if body["stream"]:
                _stream(client, body, time.monotonic() + CLIENT_TIMEOUT)
            else:
                _whole(client, body)
        except Failed as failure:
            with self._lock:
                self.tally.failed[str(failure)] += 1
        except httpx.TimeoutException:
            with self._lock:
                self.tally.hung += 1
        except (Broken, httpx.TransportError, ValueError, KeyError) as exc:
            with self._lock:
                self.tally.broken.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
            self._stop.wait(0.1)  # a refused connection fails at once: do not spin
        else:
            with self._lock:
                self.tally.completed += 1


# ---- what the stack runs ---------------------------------------------------------------


def replicas(stack: Stack, uid: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{stack.url}/v1/models/{uid}", headers=stack.headers(), timeout=5)
    response.raise_for_status()
    return list(response.json()["replicas"])


def ready(stack: Stack, uid: str) -> set[str]:
    return {r["replica_id"] for r in replicas(stack, uid) if r["state"] == "ready"}


def back_to(stack: Stack, uid: str, count: int, gone: set[str], since: float) -> float:
    """Wait until ``uid`` has ``count`` ready replicas, none of them in ``gone``; the
    seconds from ``since`` until then."""
    deadline = since + 10.0
    last: set[str] | Exception = set()
    while time.monotonic() < deadline:
        try:
            last = ready(stack, uid)
        except httpx.HTTPError as exc:
            last = exc
        if isinstance(last, set) and len(last) == count and not last & gone:
            return time.monotonic() - since
        time.sleep(0.05)
    raise AssertionError(
        f"{uid} not back to {count} ready replicas (without {sorted(gone)}) within 10 s "
        f"of the fault; last seen: {last!r}"
    )


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def metrics(stack: Stack) -> dict[str, float]:
    """The broker's counters in ``/metrics``, by name (``xb_broker_retries_total``...)."""
    text = httpx.get(stack.url + "/metrics", headers=stack.headers(), timeout=5).text
    values = {}
    for line in text.splitlines():
        if line.startswith("xb_broker_") and not line.startswith("#"):
            name, value = line.split()
            values[name] = float(value)
    return values


def broker_counters(stack: Stack) -> str:
    shown = {
        name.removeprefix("xb_broker_").removesuffix("_total"): int(value)
        for name, value in metrics(stack).items()
        if name.endswith("_total")
    }
    return ", ".join(f"{name} {value}" for name, value in shown.items())
