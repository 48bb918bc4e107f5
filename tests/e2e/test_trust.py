"""Peers are authenticated: a rogue gets no prompt, a worker id cannot be stolen, and a
worker that lost its connection comes back by itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import zmq

from tests.stack import Stack, wait_until
from xb.core import protocol as p
from xb.core.keys import KeyPair, PeerKeys, allow, peer_keys

pytestmark = pytest.mark.e2e


def fresh_keys(stack: Stack) -> PeerKeys:
    public, secret = zmq.curve_keypair()
    return PeerKeys(KeyPair(public, secret), peer_keys(stack.home).broker)


def rogue_ready(worker_id: str, model: str) -> p.Ready:
    """What a rogue says to be handed prompts: a ready replica of a real model, and room."""
    replica = p.ReplicaStatus(
        f"{model}-rogue", model, model, p.ModelState.READY, abilities=["chat"], slots=8
    )
    return p.Ready(worker_id, "rogue", os.getpid(), p.Memory(1 << 50, 1 << 50), 8, [replica])


def chat_a_few(stack: Stack, n: int = 8) -> None:
    client = stack.openai_client()
    for i in range(n):
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=3
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 3


def requests_received(sock: zmq.Socket[bytes], seconds: float) -> list[p.Message]:
    got: list[p.Message] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sock.poll(50):
            message = p.decode(sock.recv_multipart())
            if isinstance(message, p.Request):
                got.append(message)
    return got


def test_a_peer_without_an_allowed_key_is_not_heard(tiny_stack: Stack) -> None:
    stack = tiny_stack
    ctx = zmq.Context()
    rogue = stack.peer(ctx, fresh_keys(stack))  # CURVE, but its key is not in the allow-list
    plain = ctx.socket(zmq.DEALER)  # no CURVE at all
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(stack.broker_address)
    try:
        for sock in (rogue, plain):
            with contextlib.suppress(zmq.Again):  # its handshake fails: this never arrives
                sock.send_multipart(p.encode(rogue_ready("rogue", "tiny")), zmq.NOBLOCK)
        chat_a_few(stack)
        assert [w["host"] for w in stack.cluster()] != ["rogue"]
        assert len(stack.cluster()) == 1
        assert requests_received(rogue, 0.5) == [] and requests_received(plain, 0.5) == []
    finally:
        rogue.close(0)
        plain.close(0)
        ctx.term()


def test_a_worker_id_cannot_be_taken_over_by_another_key(tiny_stack: Stack) -> None:
    stack = tiny_stack
    (real,) = stack.cluster()
    # The attacker even holds a key the broker allows (a worker of its own, say).
    keys = fresh_keys(stack)
    allow(stack.home, keys.own.public.decode(), "other-worker")
    ctx = zmq.Context()
    thief = stack.peer(ctx, keys)
    try:
        wait_until(lambda: thief.poll(0, zmq.POLLOUT))  # its handshake went through
        thief.send_multipart(p.encode(rogue_ready(real["worker_id"], "tiny")))
        chat_a_few(stack, 12)
        assert requests_received(thief, 0.5) == []
        (still,) = stack.cluster()
        assert still["pid"] == real["pid"] and still["host"] == real["host"]
        assert [r["replica_id"] for r in still["replicas"]] == ["tiny-0"]
    finally:
        thief.close(0)
        ctx.term()


def test_a_worker_cut_off_long_enough_to_be_dropped_comes_back(
    make_stack: Callable[..., Stack], tiny_model: Path
) -> None:
    stack = make_stack(1)
    (worker,) = stack.workers
    stack.launch(model_name="tiny", model_path=str(tiny_model))
    worker_id = stack.worker_id(worker)
    os.kill(worker.pid, signal.SIGSTOP)  # silent: no heartbeats, no answers
    try:
        wait_until(lambda: stack.cluster() == [], timeout=10)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    # It notices, announces itself again with the model it still runs, and serves.
    back = wait_until(
        lambda: [w for w in stack.cluster() if w["worker_id"] == worker_id], timeout=15
    )
    assert [r["state"] for r in back[0]["replicas"]] == ["ready"]
    wait_until(lambda: httpx.get(f"{stack.url}/v1/models/tiny").status_code == 200)
    chat_a_few(stack, 3)


def xb(home: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "xb.client", *args],
        env={**os.environ, "XB_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_worker_with_a_home_of_its_own_joins_once_its_key_is_allowed(
    make_stack: Callable[..., Stack], tiny_model: Path, tmp_path: Path
) -> None:
    """The README's steps for a worker on another machine, with another XB_HOME."""
    stack = make_stack(0)
    elsewhere = tmp_path / "other-machine"
    broker_key = json.loads(xb(stack.home, "keys", "--json"))["broker"]
    worker_key = json.loads(xb(elsewhere, "keys", "--json"))["peer"]
    command = [
        sys.executable,
        "-m",
        "xb.worker",
        "--broker",
        stack.broker_address,
        *stack.dir_args(),
    ]
    env = {**os.environ, "XB_HOME": str(elsewhere)}
    worker = subprocess.Popen([*command, "--broker-key", broker_key], env=env)
    stack.workers.append(worker)
    time.sleep(3)
    assert stack.cluster() == []  # its key is not allowed yet: the broker does not hear it
    xb(stack.home, "keys", "allow", worker_key, "--name", "other-machine")
    wait_until(lambda: len(stack.cluster()) == 1, timeout=30)  # a new socket within 6 s
    stack.launch(model_name="tiny", model_path=str(tiny_model))
    chat_a_few(stack, 2)
    # Without the broker's key it waits for a broker of its own home (start order does not
    # matter), and says what to give for a broker elsewhere.
    log = tmp_path / "lost.log"
    with log.open("wb") as out:
        lost = subprocess.Popen(
            command, env={**env, "XB_HOME": str(tmp_path / "third")}, stdout=out, stderr=out
        )
    stack.workers.append(lost)
    said = wait_until(lambda: "waiting for the broker's key" in log.read_text() and log.read_text())
    assert "give --broker-key" in said
    assert lost.poll() is None
