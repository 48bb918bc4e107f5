"""Every child process dies with its parent, and shutdown never waits on a hung request."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from tests.stack import Stack, alive, free_port, long_chat, wait_until

pytestmark = pytest.mark.integration


def test_model_processes_die_with_a_killed_worker(
    make_stack: Callable[..., Stack], tiny_model: Path
) -> None:
    stack = make_stack(1)
    (worker,) = stack.workers
    stack.launch(model_name="tiny", model_path=str(tiny_model), replica=1)
    children = [c.pid for c in psutil.Process(worker.pid).children()]
    assert len(children) == 1
    worker.send_signal(signal.SIGKILL)  # no chance to clean up
    worker.wait(5)
    wait_until(lambda: not alive(children), timeout=5)


def test_sigterm_stops_a_local_broker_its_worker_and_models_despite_a_hung_request(
    tmp_path: Path, endless_model: Path
) -> None:
    api = free_port()
    env = {**Stack(home=tmp_path).env()}
    broker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xb.broker",
            "--local",
            "--port",
            str(free_port()),
            "--api-port",
            str(api),
            "--model-dir",
            str(endless_model.parent),
        ],
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{api}"
        wait_until(lambda: httpx.get(url + "/v1/cluster/info", timeout=1).json(), timeout=30)
        body = {"model_name": "endless", "model_path": str(endless_model), "n_ctx": 4096}
        assert httpx.post(url + "/v1/models", json=body, timeout=60).status_code == 200
        family = [broker.pid, *(c.pid for c in psutil.Process(broker.pid).children(True))]
        assert len(family) == 4  # xb-broker (the facade), its broker process, worker and model

        # A client that keeps a stream open and reads it slowly: a hung request.
        started = threading.Event()

        def hang() -> None:
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream(
                    "POST", url + "/v1/chat/completions", json=long_chat("endless"), timeout=60
                ) as response,
            ):
                for _ in response.iter_lines():
                    started.set()
                    time.sleep(0.5)

        reader = threading.Thread(target=hang, daemon=True)
        reader.start()
        assert started.wait(20)
        began = time.monotonic()
        broker.send_signal(signal.SIGTERM)
        broker.wait(15)
        wait_until(lambda: not alive(family), timeout=10)
        took = time.monotonic() - began
        print(f"shutdown with a hung stream took {took:.1f} s")
        assert took < 10
    finally:
        if broker.poll() is None:
            broker.kill()


def test_a_broker_port_in_use_is_refused_with_the_reason(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(0)
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "xb.broker",
            "--port",
            str(stack.broker_port),
            "--api-port",
            str(free_port()),
        ],
        env={**Stack(home=tmp_path).env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "the broker did not start: Address already in use" in second.stderr
