"""The worker's uplink: READY first on every new connection, and final frames kept until
a connection carries them."""

from __future__ import annotations

import os
import time

import pytest
import zmq

from tests.stack import free_port
from xb.core import protocol as p
from xb.worker.uplink import Uplink

pytestmark = pytest.mark.integration


def ready() -> p.Ready:
    return p.Ready("w1", "host", os.getpid(), p.Memory(1, 1), 1)


def exchange(
    uplink: Uplink, poller: zmq.Poller, broker: zmq.Socket[bytes], count: int
) -> list[p.Message]:
    """Run the uplink until the broker has ``count`` messages (or 20 s pass)."""
    out: list[p.Message] = []
    deadline = time.monotonic() + 20
    while len(out) < count and time.monotonic() < deadline:
        uplink.receive(dict(poller.poll(20)))
        while broker.poll(0):
            out.append(p.decode(broker.recv_multipart()[1:]))
    return out


def bind(broker: zmq.Socket[bytes], address: str) -> None:
    """Bind, waiting for the closed socket before it to let go of the port (libzmq closes
    in its own thread)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            broker.bind(address)
            return
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_finals_sent_while_disconnected_arrive_after_ready() -> None:
    ctx = zmq.Context()
    poller = zmq.Poller()
    address = f"tcp://127.0.0.1:{free_port()}"
    uplink = Uplink(ctx, poller, address, None, ready, interval=1.0)
    uplink.connect()  # nothing listens yet
    broker = ctx.socket(zmq.ROUTER)
    broker.setsockopt(zmq.LINGER, 0)
    try:
        final = p.Final("r1", "stop", p.Usage(1, 1, 2))
        assert not uplink.send(final)  # no connection: kept, not queued
        assert not uplink.send(p.Heartbeat())  # anything else is simply dropped
        broker.bind(address)
        # The handshake succeeds: READY, then what was kept, and nothing else.
        assert [type(m) for m in exchange(uplink, poller, broker, 2)] == [p.Ready, p.Final]
        # The heartbeat sent while disconnected was dropped, not queued.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            uplink.receive(dict(poller.poll(20)))
            assert not broker.poll(0)
        # A new connection (here: the broker came back) hears READY and the final again;
        # the broker ignores an end it has already seen.
        broker.close(0)
        broker = ctx.socket(zmq.ROUTER)
        broker.setsockopt(zmq.LINGER, 0)
        bind(broker, address)
        assert [type(m) for m in exchange(uplink, poller, broker, 2)] == [p.Ready, p.Final]
    finally:
        uplink.close()
        broker.close(0)
        ctx.term()
