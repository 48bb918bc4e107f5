"""What the broker's handlers send, in order, until the loop delivers it.

A handler never touches the socket: it appends ``(identity, frames)`` here, and the loop
delivers everything once the message at hand is handled (``Handlers.flush``). A send that
cannot be delivered (the peer is gone, or too far behind to take more) is counted, and its
``on_fail`` runs then: a request that a worker did not take goes elsewhere. The outbox
holds what one message or one heartbeat tick causes, so it is bounded by the cluster's
own bounds (requests waiting per model, replicas per model, workers).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

from xb.core import protocol as p

OnFail = Callable[[], None] | None


class Delivery(enum.Enum):
    SENT = "sent"
    LAGS = "lags"  # the peer's queue is full: it reads too slowly, or not at all
    GONE = "gone"  # the peer's connection is closed


class Outbox:
    __slots__ = ("gone", "pending")

    def __init__(self) -> None:
        self.pending: deque[tuple[bytes, list[bytes], OnFail]] = deque()
        # Peers found gone by a delivery. They are dealt with once everything before them
        # is delivered, never in the middle of a handler (a send inside a loop, say).
        self.gone: set[bytes] = set()

    def send(self, identity: bytes, message: p.Message, on_fail: OnFail = None) -> None:
        self.pending.append((identity, p.encode(message), on_fail))

    def forward(self, identity: bytes, frames: list[bytes]) -> None:
        """Pass frames a peer sent on as they are (a worker's PARTIAL, FINAL, ERROR)."""
        self.pending.append((identity, frames, None))

    def error(self, identity: bytes, request_id: str, code: p.ErrorCode, text: str) -> None:
        self.send(identity, p.Error(request_id, code, text))
