"""The broker: one ROUTER socket that workers and facades connect to, and one poll loop.

Workers announce themselves with READY and then send HEARTBEAT, MODEL_EVENT and the
reply frames of the requests they run. Facades send SUBMIT, CANCEL and management calls.
The loop only receives, hands each message to the handler tables (``handlers.py``), and
delivers what they sent; every heartbeat interval it runs the periodic work (heartbeats,
silent workers, self-healing).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from xb.broker.handlers import DEFAULT_MAX_QUEUE, Handlers
from xb.broker.outbox import Delivery
from xb.broker.peers import authenticate
from xb.broker.routing import RoutingPolicy
from xb.core import protocol as p
from xb.core.keys import broker_keys
from xb.core.settings import HEARTBEAT_INTERVAL
from xb.core.transport import configure_router

log = logging.getLogger("xb.broker")

__all__ = ["DEFAULT_MAX_QUEUE", "Broker"]

# The socket calls of the hot path, without pyzmq's Python layer (see ``_drain``).
_socket_recv, _socket_send = zmq.backend.Socket.recv, zmq.backend.Socket.send
_MORE = int(zmq.SNDMORE)
_NOBLOCK_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_READY = p.encode(p.Ready("", "", 0, p.Memory(0, 0), 0))[1]  # READY's command frame


class Broker:
    def __init__(
        self,
        bind: str,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        max_queue: int = DEFAULT_MAX_QUEUE,
        policy: RoutingPolicy | None = None,
        home: Path | None = None,
        state: Path | None = None,
        scheduler: str = "fair",
    ) -> None:
        """``home``: where the broker's keys and allow-list are; None serves plain,
        unauthenticated peers (``--insecure``). ``state``: the file that keeps the desired
        state (``state.py``) across restarts; None keeps it in memory."""
        self.interval = heartbeat_interval
        self.handlers = Handlers(
            heartbeat_interval=heartbeat_interval,
            max_queue=max_queue,
            policy=policy,
            state=state,
            secure=home is not None,
            scheduler=scheduler,
        )
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        keys = None
        if home is not None:
            keys = broker_keys(home)
            self._auth, self.allowlist = authenticate(self._ctx, home)
        self.secure = keys is not None
        self._sock = self._ctx.socket(zmq.ROUTER)
        configure_router(self._sock, keys)
        self._sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_BODY_BYTES + 4096)
        try:
            self._sock.bind(bind)
        except zmq.ZMQError:
            self.close()  # the authenticator's thread, the context and the state file
            raise
        self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def stats(self) -> p.BrokerStats:
        return self.handlers.stats()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        next_heartbeat = time.monotonic() + self.interval
        readable = [(self._sock, zmq.POLLIN)]
        try:
            while not self._stop.is_set():
                timeout = max(0.0, min(next_heartbeat - time.monotonic(), 0.25))
                if zmq.zmq_poll(readable, int(timeout * 1000)):
                    self._drain()
                now = time.monotonic()
                if now >= next_heartbeat:
                    next_heartbeat = now + self.interval
                    self.handlers.tick(now, self._deliver)
        finally:
            self.close()

    def close(self) -> None:
        """Let go of the socket and the state file (``run`` does when it ends)."""
        if self._sock.closed:
            return
        self.handlers.close()
        self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def _drain(self) -> None:
        # pyzmq's recv_multipart and send_multipart cost more than the broker's own work
        # on a frame (bench/broker.py: 9.9 and 5.9 us a message, against 3.7 and 1.1 us
        # for the Cython calls underneath), so the hot path calls those directly.
        sock = self._sock
        handlers, deliver = self.handlers, self._deliver
        for _ in range(1000):  # bounded, so heartbeats still go out under load
            try:
                frame = _socket_recv(sock, zmq.NOBLOCK, False)
            except zmq.Again:
                return
            frames = [frame.bytes]
            while frame.more:
                frame = _socket_recv(sock, 0, False)
                frames.append(frame.bytes)
            # With CURVE the peer's public key travels with every frame; only a READY
            # needs it (a worker id is bound to the key that announced it).
            key = ""
            if self.secure and len(frames) > 2 and frames[2] == _READY:
                key = str(frame.get("User-Id"))
            handlers.process(frames, key)
            handlers.flush(deliver)

    def _deliver(self, identity: bytes, frames: list[bytes]) -> Delivery:
        """Send without waiting: a peer that is gone or full refuses the first part."""
        sock = self._sock
        try:
            _socket_send(sock, identity, _NOBLOCK_MORE)
            for frame in frames[:-1]:
                _socket_send(sock, frame, _MORE)
            _socket_send(sock, frames[-1], 0)
        except zmq.Again:
            return Delivery.LAGS
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return Delivery.GONE
        return Delivery.SENT
