"""Synthetic peers for bench/broker.py, each the body of a process of its own.

They speak the real protocol (``xb.core.protocol``) over real sockets set up as xb's own peers
are (``xb.core.transport``), and do as little else as they can, so the broker is what gets
measured: a worker answers every REQUEST at once with ``max_tokens`` PARTIAL frames and a
FINAL; a facade keeps a number of requests in flight; an idle host holds many workers that
only heartbeat. The echo peer is the far end of the ``zmq.proxy`` baseline, and does what a
synthetic worker does for a request (read its id, answer with a FINAL).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import resource
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import msgspec
import zmq
from zmq.backend import Socket as _RawSocket

from xb.broker.server import Broker
from xb.broker.table import Model
from xb.core import protocol as p
from xb.core.keys import KeyPair, PeerKeys
from xb.core.transport import configure_peer, configure_router

MODEL = "bench"
_MEMORY = p.Memory(total=1 << 40, free=1 << 40)
_PROMPT = [p.ChatMessage("user", "Tell me a long story about the sea.")]


class _Params(msgspec.Struct):
    max_tokens: int | None = None


class _Request(msgspec.Struct):
    """The two fields of a REQUEST (or SUBMIT) a synthetic worker needs; the rest is skipped."""

    request_id: str
    params: _Params


_read_request = msgspec.msgpack.Decoder(_Request)


def _command(message: p.Message) -> bytes:
    return p.encode(message)[1]


REQUEST = _command(p.Request("", "", "chat", p.GenerateParams()))
PARTIAL = _command(p.Partial("", "", 0))
FINAL = _command(p.Final("", "", p.Usage(0, 0, 0)))
ERROR = _command(p.Error("", p.ErrorCode.INTERNAL, ""))
DISCONNECT = _command(p.Disconnect())


# pyzmq's send_multipart and recv_multipart build an IntFlag per frame (SNDMORE | flags,
# RCVMORE): on 2 cores that overhead in the load generators takes CPU from the broker.
_raw_send, _raw_recv, _raw_get = _RawSocket.send, _RawSocket.recv, _RawSocket.get
_SNDMORE, _NOBLOCK, _RCVMORE = int(zmq.SNDMORE), int(zmq.NOBLOCK), int(zmq.RCVMORE)


def send(sock: zmq.Socket[Any], frames: list[bytes]) -> None:
    for frame in frames[:-1]:
        _raw_send(sock, frame, _SNDMORE)
    _raw_send(sock, frames[-1], 0)


def recv(sock: zmq.Socket[Any]) -> list[bytes]:
    """One multipart message without waiting; raises ``zmq.Again`` when there is none."""
    frames = [_raw_recv(sock, _NOBLOCK)]
    while _raw_get(sock, _RCVMORE):
        frames.append(_raw_recv(sock, 0))
    return frames


def raise_fd_limit() -> None:
    """A thousand connections need more descriptors than the usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _dealer(ctx: zmq.Context[Any], address: str, keys: PeerKeys | None) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    configure_peer(sock, keys)
    sock.connect(address)
    return sock


def _answer(sock: zmq.Socket[Any], body: bytes, envelope: list[bytes]) -> None:
    request = _read_request.decode(body)
    rid, tokens = request.request_id, request.params.max_tokens or 0
    for i in range(tokens):
        send(sock, [*envelope, *p.encode(p.Partial(rid, "tok ", 1, index=i))])
    usage = p.Usage(prompt_tokens=8, completion_tokens=tokens, total_tokens=8 + tokens)
    final = p.Final(rid, "length", usage, partials=tokens)
    send(sock, [*envelope, *p.encode(final)])


# ---- the broker ---------------------------------------------------------------------------


def broker(bind: str, home: str | None, spec: str, ready: Connection) -> None:
    """The broker class ``spec`` ("module:Class"), alone in its process, until SIGTERM."""
    module, name = spec.split(":")
    cls = getattr(importlib.import_module(module), name)
    raise_fd_limit()
    logging.getLogger("xb").setLevel(logging.ERROR)  # 1,000 joins and leaves, not measured
    server = cls(bind, home=Path(home) if home else None)
    # The synthetic workers announce replicas of models nobody launched, and a broker
    # stops those: its desired state names both models here, with room for every
    # replica, and it never places one itself (the workers bring them all).
    cluster = server.handlers.cluster
    for uid in (MODEL, "idle"):
        cluster.models[uid] = Model(p.ModelSpec(uid, uid), wanted=1 << 30, created=0)
    cluster.settle_until = float("inf")
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    ready.send(os.getpid())
    server.run()


# ---- busy workers and facades -----------------------------------------------------------


def worker(address: str, keys: PeerKeys | None, worker_id: str, slots: int, stop: Event) -> None:
    """One worker hosting one ready replica of ``MODEL`` with ``slots`` slots."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = _dealer(ctx, address, keys)
    status = p.ReplicaStatus(
        f"{worker_id}-0", MODEL, MODEL, p.ModelState.READY, abilities=["chat"], slots=slots
    )
    ready = p.encode(p.Ready(worker_id, "bench", os.getpid(), _MEMORY, slots, [status]))
    heartbeat = p.encode(p.Heartbeat(_MEMORY, [status]))
    sock.send_multipart(ready)
    next_heartbeat = time.monotonic() + 1.0
    try:
        while not stop.is_set():
            if sock.poll(100):
                for _ in range(256):
                    try:
                        frames = recv(sock)
                    except zmq.Again:
                        break
                    if frames[1] == REQUEST:
                        _answer(sock, frames[2], [])
                    elif frames[1] == DISCONNECT:
                        sock.send_multipart(ready)
            now = time.monotonic()
            if now >= next_heartbeat:
                next_heartbeat = now + 1.0
                sock.send_multipart(heartbeat)
    finally:
        sock.close(linger=0)
        ctx.term()


def facade(address: str, keys: PeerKeys | None, conn: Connection) -> None:
    """Runs the loads the driver sends: ``(depth, tokens, warmup, seconds)`` keeps ``depth``
    requests in flight and answers ``(finals, partials, errors, seconds)`` counted after
    the warm-up; None ends it."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = _dealer(ctx, address, keys)
    prefix, sent = f"{os.getpid()}-", 0
    try:
        while (command := conn.recv()) is not None:
            depth, tokens, warmup, seconds = command
            params = p.GenerateParams(messages=_PROMPT, max_tokens=tokens)

            def submit(params: p.GenerateParams = params) -> None:
                nonlocal sent
                sent += 1
                send(sock, p.encode(p.Submit(f"{prefix}{sent}", MODEL, "chat", params)))

            for _ in range(depth):
                submit()
            finals = partials = errors = 0
            start = time.monotonic()
            mark, end = start + warmup, start + warmup + seconds
            at_mark: tuple[int, int, float] | None = None
            outstanding = depth
            while True:
                now = time.monotonic()
                if at_mark is None and now >= mark:
                    at_mark = (finals, partials, now)
                if now >= end:
                    break
                if not sock.poll(50):
                    continue
                for _ in range(512):
                    try:
                        frames = recv(sock)
                    except zmq.Again:
                        break
                    if frames[1] == PARTIAL:
                        partials += 1
                    elif frames[1] in (FINAL, ERROR):
                        finals += frames[1] == FINAL
                        errors += frames[1] == ERROR
                        submit()
            assert at_mark is not None
            result = (finals - at_mark[0], partials - at_mark[1], errors, now - at_mark[2])
            # Let what is in flight end, so the next load starts from nothing.
            deadline = time.monotonic() + 10
            while outstanding and time.monotonic() < deadline:
                if sock.poll(100):
                    frames = sock.recv_multipart()
                    outstanding -= frames[1] in (FINAL, ERROR)
            conn.send(result)
    finally:
        sock.close(linger=0)
        ctx.term()


# ---- idle workers -------------------------------------------------------------------------


def idle_host(address: str, keys: PeerKeys | None, ids: list[str], stop: Event) -> None:
    """Workers ``ids``, each on its own connection with one ready replica, heartbeating once
    a second, spread evenly over the second; they read (and drop) the broker's heartbeats."""
    raise_fd_limit()
    ctx: zmq.Context[Any] = zmq.Context()
    socks = [_dealer(ctx, address, keys) for _ in ids]
    readies, heartbeats = [], []
    for worker_id in ids:
        status = p.ReplicaStatus(
            f"{worker_id}-0", "idle", "idle", p.ModelState.READY, abilities=["chat"], slots=4
        )
        readies.append(p.encode(p.Ready(worker_id, "bench", os.getpid(), _MEMORY, 4, [status])))
        heartbeats.append(p.encode(p.Heartbeat(_MEMORY, [status])))
    for sock, ready in zip(socks, readies, strict=True):
        sock.send_multipart(ready)
    step, due, i = 1.0 / len(ids), time.monotonic(), 0
    try:
        while not stop.is_set():
            now = time.monotonic()
            while due <= now:
                sock = socks[i]
                with contextlib.suppress(zmq.Again):
                    while True:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                        if frames[1] == DISCONNECT:
                            sock.send_multipart(readies[i], zmq.NOBLOCK)
                with contextlib.suppress(zmq.Again):
                    sock.send_multipart(heartbeats[i], zmq.NOBLOCK)
                i, due = (i + 1) % len(ids), due + step
            time.sleep(min(0.01, max(due - time.monotonic(), 0.0)))
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()


# ---- the zmq.proxy baseline -------------------------------------------------------------


def _curve_server(sock: zmq.Socket[Any], keys: KeyPair | None) -> None:
    if keys is not None:
        sock.curve_server = True
        sock.curve_secretkey = keys.secret
        sock.curve_publickey = keys.public


def proxy(front: str, back: str, keys: KeyPair | None) -> None:
    """libzmq's proxy: a ROUTER for clients, a DEALER for the echo peer, no Python between."""
    ctx: zmq.Context[Any] = zmq.Context()
    frontend, backend = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    configure_router(frontend, None)
    backend.setsockopt(zmq.LINGER, 0)
    for sock, address in ((frontend, front), (backend, back)):
        _curve_server(sock, keys)
        sock.bind(address)
    zmq.proxy(frontend, backend)


def echo_direct(address: str, server: KeyPair | None, stop: Event) -> None:
    """The echo peer as a ROUTER that clients reach directly: the no-broker baseline."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    configure_router(sock, None)
    _curve_server(sock, server)
    sock.bind(address)
    _echo_loop(sock, stop)
    sock.close(linger=0)
    ctx.term()


def echo_behind(address: str, keys: PeerKeys | None, stop: Event) -> None:
    """The echo peer as a DEALER connected to the proxy's backend."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = _dealer(ctx, address, keys)
    _echo_loop(sock, stop)
    sock.close(linger=0)
    ctx.term()


def _echo_loop(sock: zmq.Socket[Any], stop: Event) -> None:
    while not stop.is_set():
        if sock.poll(100):
            frames = sock.recv_multipart()
            _answer(sock, frames[-1], frames[:-3])


class FirstComeFirstServedBroker(Broker):
    """The broker with ``--scheduler fifo``, to measure the fair scheduler against
    (``--broker xb.broker.server:Broker,bench.synthetic:FirstComeFirstServedBroker``)."""

    def __init__(self, bind: str, **options: Any) -> None:
        super().__init__(bind, scheduler="fifo", **options)
