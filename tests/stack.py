"""Real xb processes on loopback ports, for the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import zmq

from xb.core.keys import PeerKeys, peer_keys
from xb.core.transport import configure_peer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.TransportError, ConnectionError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")


def long_chat(model: str, max_tokens: int = 4000, stream: bool = True) -> dict[str, Any]:
    """A chat request that keeps a model busy for seconds (on the test suite's endless model)."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


KEEPALIVE = ": keep-alive"


def next_line(lines: Iterator[str]) -> str:
    """The next line of an SSE stream that says something (no blank line, no keep-alive)."""
    return next(line for line in lines if line and line != KEEPALIVE)


def kill_tree(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for proc in [*children]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)
    if process.poll() is None:
        process.send_signal(sig)
    process.wait(10)


def alive(pids: list[int]) -> list[int]:
    """The processes of ``pids`` still running (zombies count as gone)."""
    living = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
    return living


@dataclass
class Stack:
    """A real xb-broker (with its facade) and any number of xb-worker processes."""

    home: Path
    broker_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    broker_args: list[str] = field(default_factory=list)
    model_dirs: list[Path] = field(default_factory=list)  # --model-dir of every process
    api_key: str | None = None  # sent by the helpers below; the broker's are in broker_args
    broker_log: Path | None = None  # where the broker's stdout and stderr go, if not inherited
    broker: subprocess.Popen[bytes] | None = None
    _log_file: Any = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    facades: list[subprocess.Popen[bytes]] = field(default_factory=list)
    clients: list[openai.OpenAI] = field(default_factory=list)  # closed by stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def broker_address(self) -> str:
        return f"tcp://127.0.0.1:{self.broker_port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "XB_HOME": str(self.home)}

    def dir_args(self) -> list[str]:
        return [arg for folder in self.model_dirs for arg in ("--model-dir", str(folder))]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self) -> None:
        if self.broker_log is not None and self._log_file is None:  # a restart keeps it
            self._log_file = self.broker_log.open("ab")
        self.broker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xb.broker",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.broker_port),
                "--api-port",
                str(self.api_port),
                *self.dir_args(),
                *self.broker_args,
            ],
            env=self.env(),
            stdout=self._log_file,
            stderr=self._log_file,
        )
        wait_until(lambda: httpx.get(self.url + "/health", timeout=1).status_code == 200)

    def add_worker(self, *args: str) -> subprocess.Popen[bytes]:
        before = {w["worker_id"] for w in self.cluster()}
        worker = self.start_worker(*args)
        wait_until(lambda: len({w["worker_id"] for w in self.cluster()} - before) == 1)
        return worker

    def start_worker(self, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
        """An xb-worker for this broker, not waited for; its output into ``log`` if given."""
        worker = self._spawn("xb.worker", list(args), self.env(), log)
        self.workers.append(worker)
        return worker

    def _spawn(
        self, module: str, args: list[str], env: dict[str, str], log: Path | None
    ) -> subprocess.Popen[bytes]:
        """``python -m module`` for this broker, its output into ``log`` if given."""
        command = [sys.executable, "-m", module, "--broker", self.broker_address]
        with contextlib.ExitStack() as files:
            out = files.enter_context(log.open("ab")) if log is not None else None
            return subprocess.Popen(
                [*command, *self.dir_args(), *args], env=env, stdout=out, stderr=out
            )

    def add_facade(self, *args: str, home: Path | None = None) -> str:
        """Another REST facade (xb-api) for this broker, with XB_HOME ``home`` (default:
        the broker's); its base URL, once it has heard from the broker."""
        url = self.start_facade(*args, home=home)[1]
        models = url + "/v1/models"
        wait_until(lambda: httpx.get(models, headers=self.headers(), timeout=2).status_code == 200)
        return url

    def start_facade(
        self, *args: str, home: Path | None = None, log: Path | None = None
    ) -> tuple[subprocess.Popen[bytes], str]:
        """An xb-api for this broker, not waited for, and its base URL; ``home`` and
        ``log`` as for add_facade and start_worker."""
        port = free_port()
        env = {**self.env(), "XB_HOME": str(home or self.home)}
        facade = self._spawn("xb.api", ["--port", str(port), *args], env, log)
        self.facades.append(facade)
        return facade, f"http://127.0.0.1:{port}"

    def worker_id(self, worker: subprocess.Popen[bytes]) -> str:
        return next(w["worker_id"] for w in self.cluster() if w["pid"] == worker.pid)

    def in_flight(self) -> int:
        """Requests the broker has sent to replicas that have not ended."""
        return sum(r["in_flight"] for w in self.cluster() for r in w["replicas"])

    def peer(self, ctx: zmq.Context[zmq.Socket[bytes]], keys: PeerKeys | None = None) -> Any:
        """A DEALER connected to the broker with this home's allowed peer key (or ``keys``)."""
        sock = ctx.socket(zmq.DEALER)
        configure_peer(sock, keys or peer_keys(self.home))
        sock.connect(self.broker_address)
        return sock

    @contextlib.contextmanager
    def running(self, workers: int = 1) -> Iterator[Stack]:
        """The broker and ``workers`` workers, every process stopped on the way out."""
        try:
            self.start()
            for _ in range(workers):
                self.add_worker()
            yield self
        finally:
            self.stop()

    def broker_loop_pid(self) -> int:
        """The pid of the broker's own process, which xb-broker starts beside its facade."""
        assert self.broker is not None
        children = psutil.Process(self.broker.pid).children()
        return next(c.pid for c in children if "xb.broker.process" in c.cmdline())

    def cluster(self) -> list[dict[str, Any]]:
        response = httpx.get(self.url + "/v1/cluster/info", headers=self.headers(), timeout=5)
        assert response.status_code == 200, f"{response.status_code}: {response.text}"
        return list(response.json())

    def launch(self, **body: Any) -> str:
        response = httpx.post(
            self.url + "/v1/models", json=body, headers=self.headers(), timeout=60
        )
        assert response.status_code == 200, response.text
        return str(response.json()["model_uid"])

    def openai_client(self, api_key: str = "x") -> openai.OpenAI:
        """An OpenAI client of this stack's facade, closed when the stack stops."""
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        for process in [*self.facades, *self.workers, self.broker]:
            if process is not None:
                kill_tree(process)
        if self._log_file is not None:
            self._log_file.close()
