"""Several hosts, for real: the broker and its facade in one Linux network namespace, two
workers in two others, each joined to the broker's by a veth pair. Cutting one worker's
link ends its requests with a clear error, its replica is placed again on the other
worker, and the worker rejoins when the link comes back.

Needs root and iproute2 (CI has both); skipped with the reason elsewhere. Only addresses
inside the test's own namespaces are used; the namespaces go when the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TAG = f"xbt{os.getpid() % 100000}"
BROKER_NS, W1_NS, W2_NS = f"{TAG}b", f"{TAG}w1", f"{TAG}w2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=10, capture_output=True)


def namespaces_available() -> str | None:
    """None when the test can run, else why not."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    probe = f"{TAG}probe"
    try:
        ip("netns", "add", probe)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"cannot create a network namespace here: {exc}"
    ip("netns", "del", probe)
    return None


@pytest.fixture
def network() -> Iterator[None]:
    """Three namespaces; the workers' reach the broker's at 10.231.N.1 over vethN."""
    reason = namespaces_available()
    if reason is not None:
        pytest.skip(reason)
    made: list[str] = []
    try:
        for ns in (BROKER_NS, W1_NS, W2_NS):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for n, ns in ((1, W1_NS), (2, W2_NS)):
            ip("link", "add", f"{TAG}b{n}", "netns", BROKER_NS, "type", "veth",
               "peer", "name", f"{TAG}w{n}", "netns", ns)  # fmt: skip
            ip("-n", BROKER_NS, "addr", "add", f"10.231.{n}.1/24", "dev", f"{TAG}b{n}")
            ip("-n", ns, "addr", "add", f"10.231.{n}.2/24", "dev", f"{TAG}w{n}")
            ip("-n", BROKER_NS, "link", "set", f"{TAG}b{n}", "up")
            ip("-n", ns, "link", "set", f"{TAG}w{n}", "up")
        yield
    finally:
        for ns in made:
            with contextlib.suppress(subprocess.SubprocessError):
                ip("netns", "del", ns)


def in_ns(ns: str, *command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", ns, *command], env=env)


def test_a_worker_cut_off_the_network_is_healed_around_and_rejoins(
    network: None, tmp_path: Path, endless_model: Path
) -> None:
    env = {**os.environ, "XB_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    folder = str(endless_model.parent)
    processes = [
        in_ns(BROKER_NS, sys.executable, "-m", "xb.broker", "--host", "0.0.0.0",
              "--port", "9998", "--api-port", "9997", "--model-dir", folder, env=env),
    ]  # fmt: skip
    try:
        # The workers share the broker's home, and so its keys, once it has made them.
        wait_until(lambda: (tmp_path / "home" / "keys" / "broker.key").exists())
        for n, ns in ((1, W1_NS), (2, W2_NS)):
            processes.append(
                in_ns(ns, sys.executable, "-m", "xb.worker", "--broker",
                      f"tcp://10.231.{n}.1:9998", "--model-dir", folder, env=env)
            )  # fmt: skip
        driver = subprocess.run(
            ["ip", "netns", "exec", BROKER_NS, sys.executable, "-m", "tests.netns_driver",
             "http://127.0.0.1:9997", str(endless_model), W1_NS, f"{TAG}w1"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert driver.returncode == 0, driver.stdout + driver.stderr
        seen = json.loads(driver.stdout.strip().splitlines()[-1])
        print("multi-host:", json.dumps(seen))
        # The stream on the cut worker ended with a clear error within 5 s ...
        assert seen["ended"].startswith("error: "), seen
        assert seen["error_after"] <= 5.0, seen
        # ... while the other one went on.
        assert seen["other_still_going"], seen
        # Its replica was placed again on the worker left, which served both.
        assert seen["workers_during_cut"] == 1
        assert len(seen["replicas_at_end"]) == 2
        assert {state for _, state in seen["replicas_at_end"]} == {"ready"}
        # The worker came back when its link did, and the model works.
        assert seen["chat_after"] == 200
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
