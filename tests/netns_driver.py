"""The client side of the multi-host test (tests/e2e/test_hosts.py), run inside the
broker's network namespace, where the API listens on loopback.

It launches a model with two replicas, streams through both, cuts the link of the worker
that serves one stream (``ip link set ... down``), measures how the cluster copes, brings
the link back, and prints what it saw as one JSON object for the test to check.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

API, MODEL_PATH, CUT_NS, CUT_DEV = sys.argv[1:5]
DEADLINE = 30.0


def wait(check: Any, timeout: float = DEADLINE) -> float:
    """Seconds until ``check()`` is truthy; fails after ``timeout``."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            if check():
                return time.monotonic() - began
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"condition not met within {timeout} s: {check.__doc__}")


def workers() -> list[dict[str, Any]]:
    return list(httpx.get(API + "/v1/cluster/info", timeout=5).json())


def replicas() -> list[dict[str, Any]]:
    return list(httpx.get(API + "/v1/models/endless", timeout=5).json()["replicas"])


class Stream(threading.Thread):
    """A long streamed chat; records when it ended and how."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.first = threading.Event()
        self.ended_at = 0.0
        self.outcome = ""
        self.stop = False

    def run(self) -> None:
        body = {
            "model": "endless",
            "messages": [{"role": "user", "content": "go"}],
            "max_tokens": 3000,
            "stream": True,
        }
        try:
            with httpx.stream("POST", API + "/v1/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    self.first.set()
                    if '"error"' in line:
                        self.outcome = (
                            "error: " + json.loads(line[len("data: ") :])["error"]["message"]
                        )
                        break
                    if self.stop:
                        self.outcome = "stopped by the client"
                        break
                else:
                    self.outcome = "finished"
        except httpx.HTTPError as exc:
            self.outcome = f"transport error: {exc!r}"
        self.ended_at = time.monotonic()


def main() -> None:
    wait(lambda: len(workers()) == 2)
    body = {"model_name": "endless", "model_path": MODEL_PATH, "n_ctx": 4096, "replica": 2}
    launched = httpx.post(API + "/v1/models", json=body, timeout=120)
    assert launched.status_code == 200, launched.text
    where = {r["replica_id"]: r["worker_id"] for r in replicas()}
    # Two streams: the broker sends the second to the idle replica, one per worker.
    streams = [Stream(), Stream()]
    for stream in streams:
        stream.start()
        assert stream.first.wait(30)
    busy = {r["replica_id"]: r["in_flight"] for w in workers() for r in w["replicas"]}
    cut_at = time.monotonic()
    subprocess.run(["ip", "-n", CUT_NS, "link", "set", CUT_DEV, "down"], check=True)
    # One stream ends with a clear error; the other goes on.
    wait(lambda: any(s.ended_at for s in streams))
    ended = next(s for s in streams if s.ended_at)
    going = next(s for s in streams if s is not ended)
    error_after = ended.ended_at - cut_at
    still_going = not going.ended_at
    # The lost replica is placed again on the worker left: two ready replicas there.
    wait(lambda: len(workers()) == 1)
    survivors = {w["worker_id"] for w in workers()}

    def replaced() -> bool:
        """two ready replicas, both on the worker left"""
        now = replicas()
        return (
            len(now) == 2
            and all(r["state"] == "ready" for r in now)
            and {r["worker_id"] for r in now} <= survivors
        )

    replaced_after = wait(replaced)
    going.stop = True
    # The link comes back: the worker rejoins; the model keeps two replicas.
    subprocess.run(["ip", "-n", CUT_NS, "link", "set", CUT_DEV, "up"], check=True)
    rejoined_after = wait(lambda: len(workers()) == 2)

    def settled() -> bool:
        """two ready replicas once the worker is back"""
        now = replicas()
        return len(now) == 2 and all(r["state"] == "ready" for r in now)

    settled_after = wait(settled)
    reply = httpx.post(
        API + "/v1/chat/completions",
        json={"model": "endless", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=30,
    )
    print(
        json.dumps(
            {
                "placed": where,
                "busy": busy,
                "error_after": round(error_after, 2),
                "ended": ended.outcome,
                "other_still_going": still_going,
                "workers_during_cut": len(survivors),
                "replaced_after": round(replaced_after, 2),
                "rejoined_after": round(rejoined_after, 2),
                "settled_after": round(settled_after, 2),
                "replicas_at_end": [(r["worker_id"], r["state"]) for r in replicas()],
                "chat_after": reply.status_code,
            }
        )
    )


if __name__ == "__main__":
    main()
