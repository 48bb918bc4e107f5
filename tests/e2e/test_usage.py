"""Quotas and usage per tenant through the whole stack: a keys file with names, weights
and quotas, two facades in front of one broker, and the broker killed and started again.
The counts asked of ``/v1/usage``, ``xb usage`` and ``/metrics`` are those of the
responses the test received."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.stack import Stack, wait_until

pytestmark = pytest.mark.e2e

OPS = "ops-key-0123456789abcdefgh"
ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdefgh"
CAROL = "carol-key-0123456789abcdef"
KEYS = {OPS: "ops", ALICE: "alice", BOB: "bob", CAROL: "carol"}
KEYS_FILE = f"""# who may call, and their quotas
{OPS}    admin      ops
{ALICE}  inference  alice  weight=2 rpm=2
{BOB}    inference  bob    priority=batch
{CAROL}  inference  carol  tokens_per_day=1
"""


def chat(url: str, key: str, text: str = "hello") -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 3}
    return httpx.post(
        url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


class Sent:
    """What the test received, per tenant, to hold the broker's counts to."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {}

    def ok(self, reply: httpx.Response, key: str) -> None:
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
        counts = self.counts.setdefault(KEYS[key], Counter())
        counts["requests"] += 1
        counts["prompt_tokens"] += usage["prompt_tokens"]
        counts["completion_tokens"] += usage["completion_tokens"]
        details = usage.get("prompt_tokens_details") or {}
        counts["cached_tokens"] += details.get("cached_tokens") or 0

    def rows(self) -> dict[str, dict[str, int]]:
        return {tenant: dict(counts) for tenant, counts in self.counts.items()}


def counted(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    fields = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens")
    assert {r["model"] for r in report["data"]} <= {"tiny"}
    return {r["tenant"]: {f: r[f] for f in fields} for r in report["data"]}


def usage(url: str, **window: float) -> dict[str, Any]:
    reply = httpx.get(
        url + "/v1/usage", params=window, headers={"Authorization": f"Bearer {OPS}"}, timeout=10
    )
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def refused(reply: httpx.Response, quota: str) -> int:
    """Hold ``reply`` to a quota's refusal; its Retry-After."""
    assert reply.status_code == 429, reply.text
    error = reply.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert quota in error["message"], error["message"]
    return int(reply.headers["Retry-After"])


def xb_usage(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xb.client", "usage", *args, "--endpoint", stack.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**stack.env(), "COLUMNS": "200", "XB_API_KEY": OPS},
    )


def restart_broker(stack: Stack) -> None:
    """SIGKILL both of xb-broker's processes and start it again on the same home."""
    assert stack.broker is not None
    os.kill(stack.broker_loop_pid(), signal.SIGKILL)
    stack.broker.send_signal(signal.SIGKILL)
    stack.broker.wait(10)
    stack.start()

    def replica_ready() -> bool:
        reply = httpx.get(stack.url + "/v1/models/tiny", headers=stack.headers(), timeout=5)
        # Restored from the state file, the model has no replica until its worker
        # announces the one it still runs.
        replicas = reply.json()["replicas"] if reply.status_code == 200 else []
        return any(r["state"] == "ready" for r in replicas)

    wait_until(replica_ready, timeout=30)


def test_quotas_and_usage_per_key_across_facades_and_a_restart(
    tmp_path: Path, models_dir: Path, tiny_model: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(KEYS_FILE)
    keys.chmod(0o600)
    broker_log, facade_log = tmp_path / "broker.log", tmp_path / "facade.log"
    stack = Stack(
        home=tmp_path / "home",
        broker_args=["--api-keys-file", str(keys)],
        model_dirs=[models_dir],
        api_key=OPS,
        broker_log=broker_log,
    )
    sent = Sent()
    with stack.running(1):
        stack.launch(model_name="tiny", model_path=str(tiny_model))
        _, other = stack.start_facade("--api-keys-file", str(keys), log=facade_log)
        wait_until(lambda: httpx.get(other + "/health", timeout=2).status_code == 200)
        first = time.monotonic()

        # Alice's 2 requests a minute are shared by both facades: one through each, and
        # the third is refused by either. Bob, without quotas, goes on.
        sent.ok(chat(stack.url, ALICE), ALICE)
        sent.ok(chat(other, ALICE), ALICE)
        for url in (stack.url, other):
            assert (
                1
                <= refused(chat(url, ALICE), "tenant 'alice' has used its 2 requests per minute")
                <= 60
            )
        with pytest.raises(openai.RateLimitError) as streamed:
            stack.openai_client(ALICE).chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        assert streamed.value.code == "rate_limit_exceeded"
        assert 1 <= int(streamed.value.response.headers["Retry-After"]) <= 60
        sent.ok(chat(other, BOB), BOB)
        sent.ok(chat(stack.url, BOB), BOB)

        # Carol's 1 token a day: her first request runs (she had used none), and its
        # tokens use the day up.
        sent.ok(chat(other, CAROL), CAROL)
        day = time.time() // 86_400
        wait = refused(chat(stack.url, CAROL), "tenant 'carol' has used")
        assert 1 <= wait <= 86_400
        assert "of its 1 tokens per day" in chat(other, CAROL).json()["error"]["message"]

        # The broker counted what the responses said, and both facades answer the same.
        expected = sent.rows()
        assert counted(usage(stack.url, since=3600)) == expected
        assert counted(usage(other, start=time.time() - 600)) == expected
        metrics = httpx.get(stack.url + "/metrics", headers=stack.headers(), timeout=10).text
        assert 'xb_tenant_requests_total{model="tiny",tenant="alice"} 2.0' in metrics
        assert 'xb_tenant_requests_total{model="tiny",tenant="bob"} 2.0' in metrics
        completion = expected["bob"]["completion_tokens"]
        assert (
            f'xb_tenant_completion_tokens_total{{model="tiny",tenant="bob"}} {completion:.1f}'
            in metrics
        )
        assert 'xb_tenant_queue_wait_seconds_count{model="tiny",tenant="carol"} 1.0' in metrics

        # A broker killed and started again keeps the counts: Alice is still over her
        # minute (it has not passed), Carol over her day, and the usage is the same. (Asked
        # through the facade started with the broker: the other one fails what it sent
        # around the restart once it notices the broker's new instance.)
        restart_broker(stack)
        assert time.monotonic() - first < 55, "the restart took too long to test the minute"
        refused(chat(stack.url, ALICE), "tenant 'alice' has used its 2 requests per minute")
        if time.time() // 86_400 == day:  # midnight UTC did not pass meanwhile
            refused(chat(stack.url, CAROL), "tenant 'carol' has used")
        assert counted(usage(stack.url, since=3600)) == expected
        sent.ok(chat(stack.url, BOB), BOB)
        expected = sent.rows()

        as_json = xb_usage(stack, "--since", "1h", "--json")
        assert as_json.returncode == 0, as_json.stderr
        assert counted(json.loads(as_json.stdout)) == expected
        shown = xb_usage(stack, "--since", "60m")
        assert shown.returncode == 0, shown.stderr
        bob = expected["bob"]
        line = next(line for line in shown.stdout.splitlines() if line.split()[:1] == ["bob"])
        assert line.split()[:6] == [
            "bob",
            "tiny",
            "3",
            str(bob["prompt_tokens"]),
            str(bob["cached_tokens"]),
            str(bob["completion_tokens"]),
        ], shown.stdout
        none = xb_usage(stack, "--start", "0", "--end", "60")
        assert none.returncode == 0 and "no requests in this window" in none.stderr

    # Tenants are named where requests are logged; keys never are.
    logs = broker_log.read_text() + facade_log.read_text()
    assert "tenant 'alice' has used its 2 requests per minute" in logs
    for key in KEYS:
        assert key not in logs


def test_usage_windows_and_bad_ones(tiny_stack: Stack) -> None:
    assert chat(tiny_stack.url, "unused").status_code == 200  # no keys: the shared tenant
    reply = httpx.post(
        tiny_stack.url + "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "user": "dora",
        },
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    rows = {r["tenant"]: r for r in usage(tiny_stack.url)["data"]}
    assert set(rows) == {"", "dora"}
    assert rows["dora"]["completion_tokens"] == 2 and rows["dora"]["requests"] == 1
    assert usage(tiny_stack.url, start=0, end=60)["data"] == []
    for window in (
        {"since": 0},
        {"since": "soon"},
        {"start": 10, "end": 5},
        {"since": 5, "start": 1},
    ):
        bad = httpx.get(tiny_stack.url + "/v1/usage", params=window, timeout=10)
        assert bad.status_code == 400, (window, bad.text)
        assert bad.json()["error"]["message"]
