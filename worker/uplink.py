"""The worker's connection to the broker: announcing itself, and not losing final frames.

The broker gives each connection an identity of its own, so whenever the worker is
connected anew (the broker restarted, a cable was cut, the broker dropped it) it must say
READY before anything else on that connection. A socket monitor tells when a connection's
handshake succeeds; the worker announces then, and again whenever the broker says it does
not know it.

Frames are queued only on a live connection (see xb/transport.py), so a frame sent while
there is none is lost to that connection. A FINAL or ERROR frame must not be: the worker
keeps those of the last ``RESEND_SECONDS`` and sends them again after every READY (the
broker ignores an end it has seen). A lost PARTIAL frame shows as a gap in the frame
numbers, and the facade ends that request with an error rather than with missing text.
If the broker stays silent, the worker announces again, and after twice as long opens a
new socket.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from xb.core import protocol as p
from xb.core.keys import PeerKeys
from xb.core.settings import HEARTBEAT_LIVENESS
from xb.core.throttle import Throttle
from xb.core.transport import configure_peer

log = logging.getLogger("xb.worker")

RESEND_SECONDS = 30.0
MAX_KEPT = 4096  # final frames kept for sending again


class Uplink:
    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        poller: zmq.Poller,
        address: str,
        keys: PeerKeys | None,
        ready: Callable[[], p.Ready],
        interval: float,
    ) -> None:
        self.address = address
        self._ctx = ctx
        self._poller = poller
        self._keys = keys
        self._ready = ready
        self._interval = interval
        self._kept: deque[tuple[float, list[bytes]]] = deque(maxlen=MAX_KEPT)
        self._unsent = 0  # of the kept frames, the newest ones that never left
        self._warn = Throttle(log)
        self.sock: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self.seen = time.monotonic()  # when the broker last sent anything
        self._announced = 0.0

    # ---- sockets ----------------------------------------------------------------------

    def connect(self) -> None:
        """Open a new socket to the broker (closing any old one)."""
        self.close()
        sock = self._ctx.socket(zmq.DEALER)
        configure_peer(sock, self._keys)
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        sock.connect(self.address)
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(monitor, zmq.POLLIN)
        self.sock, self._monitor = sock, monitor
        self.seen = time.monotonic()

    def close(self) -> None:
        if self.sock is not None:
            self._poller.unregister(self.sock)
            self.sock.disable_monitor()
            self.sock.close(linger=0)
            self.sock = None
        if self._monitor is not None:
            self._poller.unregister(self._monitor)
            self._monitor.close(linger=0)
            self._monitor = None

    # ---- sending ----------------------------------------------------------------------

    def send(self, message: p.Message) -> bool:
        frames = p.encode(message)
        final = isinstance(message, p.Final | p.Error)
        if final:
            self._kept.append((time.monotonic(), frames))
        if self._push(frames):
            return True
        if final:
            self._unsent = min(self._unsent + 1, len(self._kept))
        else:
            self._warn.warning(
                "broker", "unsent", "broker unreachable; %s dropped", type(message).__name__
            )
        return False

    def _push(self, frames: list[bytes]) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:  # no connection, or the broker reads too slowly
            return False
        return True

    def announce(self) -> None:
        """READY on the current connection, then every final frame that may have been lost."""
        if not self._push(p.encode(self._ready())):
            return  # not connected: the handshake to come announces
        self._announced = time.monotonic()
        horizon = self._announced - RESEND_SECONDS
        for sent_at, frames in list(self._kept):
            if sent_at >= horizon and not self._push(frames):
                break
        self._unsent = 0
        log.info("announced to %s", self.address)

    # ---- receiving --------------------------------------------------------------------

    def receive(self, events: dict[zmq.Socket[bytes], int]) -> list[list[bytes]]:
        """The broker's frames, after handling what the monitor says."""
        if self._monitor is not None and events.get(self._monitor):
            while self._monitor.poll(0):
                event = recv_monitor_message(self._monitor)
                if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.announce()  # a new connection: the broker must hear READY first
        out: list[list[bytes]] = []
        sock = self.sock
        if sock is None or not events.get(sock):
            return out
        while len(out) < 1000:  # bounded, so the loop comes back to heartbeats
            try:
                out.append(sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            self.seen = time.monotonic()
        return out

    def tick(self, now: float) -> bool:
        """Heartbeat-time housekeeping; False when the broker has been silent too long
        (the caller announces or waits instead of sending a heartbeat)."""
        silent = now - self.seen
        limit = self._interval * HEARTBEAT_LIVENESS
        if silent > 2 * limit:
            log.warning("broker silent for %.1f s; connecting anew", silent)
            self.connect()
            return False
        if silent > limit:
            if now - self._announced > limit:
                log.warning("broker silent for %.1f s; announcing again", silent)
                self.announce()
            return False
        if self._unsent:
            for _, frames in list(self._kept)[-self._unsent :]:
                if not self._push(frames):
                    return True
            self._unsent = 0
        return True
