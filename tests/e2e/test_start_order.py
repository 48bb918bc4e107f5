"""Start order does not matter: a worker or an xb-api started before the broker of its
XB_HOME has made its key waits for it, says so once, and joins when the broker comes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.stack import Stack, wait_until

pytestmark = pytest.mark.e2e


def waiting_line(home: Path) -> str:
    return f"waiting for the broker's key in {home / 'keys' / 'broker.key'}"


def test_a_worker_and_a_facade_started_before_their_broker_wait_and_then_serve(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = tmp_path / "home"  # fresh: no key of any kind yet
    stack = Stack(home=home, model_dirs=[tiny_model.parent])
    worker_log, facade_log = tmp_path / "worker.log", tmp_path / "facade.log"
    try:
        worker = stack.start_worker(log=worker_log)
        facade, facade_url = stack.start_facade(log=facade_log)
        logs = (worker_log, facade_log)
        wait_until(lambda: all(waiting_line(home) in log.read_text() for log in logs), timeout=30)
        time.sleep(1.5)  # a few polls more: still waiting, not ended, and said once
        assert worker.poll() is None and facade.poll() is None
        assert [log.read_text().count(waiting_line(home)) for log in logs] == [1, 1]
        with pytest.raises(httpx.ConnectError):  # it serves once it can reach the broker
            httpx.get(facade_url + "/health", timeout=2)

        stack.start()
        wait_until(lambda: [w["pid"] for w in stack.cluster()] == [worker.pid], timeout=30)
        stack.launch(model_name="tiny", model_path=str(tiny_model))
        wait_until(lambda: httpx.get(facade_url + "/v1/models", timeout=2).json()["data"])
        client = openai.OpenAI(base_url=facade_url + "/v1", api_key="x", max_retries=0)
        stack.clients.append(client)
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 3
        for log in logs:
            assert "found the broker's key in" in log.read_text()
    finally:
        stack.stop()


def test_a_worker_started_at_the_same_moment_as_its_broker_joins(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Both make this home's peer pair at once: the broker allows the one the worker uses."""
    stack = Stack(home=tmp_path / "home", model_dirs=[tiny_model.parent])
    try:
        worker = stack.start_worker()
        stack.start()
        wait_until(lambda: [w["pid"] for w in stack.cluster()] == [worker.pid], timeout=30)
    finally:
        stack.stop()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("command", ["xb.worker", "xb.api"])
def test_a_peer_waiting_for_its_broker_stops_at_once_when_told(
    tmp_path: Path, command: str, sig: signal.Signals
) -> None:
    log = tmp_path / "peer.log"
    stack = Stack(home=tmp_path / "home")
    try:
        if command == "xb.worker":
            peer = stack.start_worker(log=log)
        else:
            peer = stack.start_facade(log=log)[0]
        wait_until(lambda: waiting_line(stack.home) in log.read_text(), timeout=30)
        peer.send_signal(sig)
        assert peer.wait(5) != 0
    finally:
        stack.stop()


def test_a_broker_key_that_is_not_a_key_is_an_error_not_a_wait(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "broker.key").write_text("garbage\n")
    env = {**Stack(home=tmp_path).env(), "COLUMNS": "250"}  # the error on one line
    done = subprocess.run(
        [sys.executable, "-m", "xb.worker", "--broker", "tcp://127.0.0.1:1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "broker.key is not a key file; restart the broker" in done.stderr


def test_a_facade_is_healthy_only_once_its_broker_has_answered(tmp_path: Path) -> None:
    stack = Stack(home=tmp_path / "home")
    try:
        stack.start()  # makes the keys; then the broker goes away
        assert stack.broker is not None
        stack.broker.kill()
        stack.broker.wait(timeout=10)
        _, facade_url = stack.start_facade()

        def health() -> httpx.Response | None:
            try:
                return httpx.get(facade_url + "/health", timeout=2)
            except httpx.ConnectError:
                return None

        first = wait_until(health, timeout=30)
        assert first.status_code == 503, first.text
        assert "has not answered yet" in first.json()["error"]["message"]
        stack.start()  # the broker again, on the same port
        wait_until(lambda: httpx.get(facade_url + "/health", timeout=2).status_code == 200)
    finally:
        stack.stop()
