"""The broker's handlers driven in-process, with no socket: frames go in through
``process``, and what they send is kept instead of reaching a peer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xb.broker.handlers import Handlers
from xb.broker.outbox import Delivery
from xb.core import protocol as p
from xb.core.demo_model import DEMO_MODEL_NAME

GIB = 1024**3
FACADE = b"facade"


class Recorder:
    """Broker handlers whose sends are kept, per peer."""

    def __init__(self, state: Path, **options: Any) -> None:
        """``options``: the handlers' own (``max_queue``, ``scheduler``)."""
        self.broker = Handlers(state=state, **options)
        self.sent: list[tuple[bytes, p.Message]] = []
        self.full: set[bytes] = set()  # peers whose queues are full: nothing reaches them
        self.closed: set[bytes] = set()  # peers whose connections closed

    def deliver(self, identity: bytes, frames: list[bytes]) -> Delivery:
        if identity in self.full:
            return Delivery.LAGS
        if identity in self.closed:
            return Delivery.GONE
        self.sent.append((identity, p.decode(frames)))
        return Delivery.SENT

    def peer(self, identity: bytes, message: p.Message) -> None:
        self.frames([identity, *p.encode(message)])

    def frames(self, frames: list[bytes]) -> None:
        """One multipart message in, as the socket loop passes it, and what it causes out."""
        self.broker.process(frames)
        self.broker.flush(self.deliver)

    def reconcile(self, now: float) -> None:
        """Self-healing's periodic work alone, at monotonic time ``now``."""
        self.broker.healing.reconcile(now)
        self.broker.flush(self.deliver)

    def take(self, identity: bytes | None = None) -> list[p.Message]:
        """What was sent (to ``identity``) since the last call."""
        mine = [m for who, m in self.sent if identity is None or who == identity]
        self.sent = [(who, m) for who, m in self.sent if identity is not None and who != identity]
        return mine

    def join(self, name: str, replicas: list[p.ReplicaStatus] | None = None) -> bytes:
        memory = p.Memory(64 * GIB, 64 * GIB)
        self.peer(name.encode(), p.Ready(name, "host", 1, memory, 4, replicas or []))
        return name.encode()

    def ready(self, worker: bytes, replica_id: str, uid: str = "m") -> None:
        status = p.ReplicaStatus(replica_id, uid, DEMO_MODEL_NAME, p.ModelState.READY, slots=1)
        self.peer(worker, p.ModelEvent(status))

    def fail(self, worker: bytes, replica_id: str, uid: str = "m") -> None:
        status = p.ReplicaStatus(
            replica_id, uid, DEMO_MODEL_NAME, p.ModelState.FAILED, "exited with code -9"
        )
        self.peer(worker, p.ModelEvent(status))

    def launch(
        self, replica: int = 1, uid: str = "m", need: int = GIB, limits: int | None = None
    ) -> p.Message:
        spec = p.ModelSpec(uid, DEMO_MODEL_NAME)
        launch = p.LaunchModel(
            "l", spec, replica, wait_ready=False, need=need, request_limits=limits
        )
        self.peer(FACADE, launch)
        (reply,) = self.take(FACADE)
        return reply

    def requests(self) -> list[tuple[bytes, p.Request]]:
        """Requests sent to workers since the last call, with where they went."""
        sent = [(who, m) for who, m in self.sent if isinstance(m, p.Request)]
        self.sent = [(who, m) for who, m in self.sent if not isinstance(m, p.Request)]
        return sent

    def launches(self) -> list[tuple[bytes, str]]:
        return [(who, m.replica_id) for who, m in self.sent if isinstance(m, p.Launch)]
