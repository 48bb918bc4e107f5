"""A broker driven in-process: frames go in through ``process``, and what it would send is
kept per peer instead of reaching a socket."""

from __future__ import annotations

from pathlib import Path

from xb.broker.server import Broker
from xb.core import protocol as p
from xb.core.demo_model import DEMO_MODEL_NAME

GIB = 1024**3
FACADE = b"facade"


class Recorder:
    """A broker whose sends are kept, per peer."""

    def __init__(self, state: Path) -> None:
        self.broker = Broker("tcp://127.0.0.1:0", state=state)
        self.sent: list[tuple[bytes, p.Message]] = []
        self.full: set[bytes] = set()  # peers whose queues are full: nothing reaches them
        self.closed: set[bytes] = set()  # peers whose connections closed

        def deliver(identity: bytes, frames: list[bytes]) -> bool:
            if identity in self.full:
                return False
            if identity in self.closed:  # as the real one does on EHOSTUNREACH
                self.broker._gone.add(identity)
                return False
            self.sent.append((identity, p.decode(frames)))
            return True

        self.broker._deliver = deliver  # type: ignore[method-assign]

    def peer(self, identity: bytes, message: p.Message) -> None:
        self.broker.process([identity, *p.encode(message)])

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
