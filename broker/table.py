"""The broker's view of the cluster, rebuilt from what workers announce."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from xb.core import protocol as p

K = TypeVar("K")
V = TypeVar("V")

PLACING_GRACE = 2.0  # seconds after retry_at for the reconcile that places a replica


@dataclass
class WorkerEntry:
    identity: bytes
    worker_id: str
    host: str
    pid: int
    memory: p.Memory
    slots: int
    last_seen: float
    queue_depth: int = 0
    in_flight: int = 0
    reserved: int = 0  # bytes promised to replicas still loading here
    served: int = 0  # requests that ended here with FINAL
    reported: set[str] | None = None  # the replica ids of its latest heartbeat
    reported_at: float = 0.0

    def info(self, now: float, replicas: list[p.ReplicaStatus]) -> p.WorkerInfo:
        return p.WorkerInfo(
            worker_id=self.worker_id,
            host=self.host,
            pid=self.pid,
            memory=self.memory,
            slots=self.slots,
            replicas=replicas,
            queue_depth=self.queue_depth,
            in_flight=self.in_flight,
            heartbeat_age=round(now - self.last_seen, 3),
            served=self.served,
        )


@dataclass
class Replica:
    replica_id: str
    model_uid: str
    worker: bytes
    state: p.ModelState
    error: str | None = None
    in_flight: int = 0  # requests the broker sent here that have not ended
    batch: int = 0  # of which ``batch`` requests (interactive ones may preempt them)
    tenants: Counter[str] = field(default_factory=Counter)  # its requests here, by tenant
    reserved: int = 0
    progress: p.Progress | None = None
    slots: int = 1  # sequences it decodes at once, as its worker reports
    cached_tokens: int = 0
    since: float = field(default_factory=time.monotonic)  # when it was placed or taken back


@dataclass
class Waiter:
    """A facade waiting for replicas to be ready: a launch, or a scale-up."""

    client: bytes
    request_id: str
    replica_ids: set[str]
    initial: bool = False  # the model's first launch: if it fails, the model goes


class Queued(NamedTuple):
    """A request waiting for a free slot. ``avoid``: the replica it failed on before its
    first token, when it is being retried (once) elsewhere."""

    client: bytes
    submit: p.Submit
    retried: bool = False
    avoid: str = ""


@dataclass
class Model:
    spec: p.ModelSpec  # what each replica loads
    wanted: int  # replicas the user asked for (launch, then scale)
    created: int
    abilities: list[str] = field(default_factory=list)  # known once a replica is ready
    need: int = 0  # estimated bytes per replica
    pinned_worker: str | None = None  # the worker id the user named for its replicas
    request_limits: int | None = None
    next_index: int = 0
    first_index: int = 0  # ids below it belong to an earlier model of this uid
    served: int = 0
    tokens: int = 0
    replicas: dict[str, Replica] = field(default_factory=dict)
    waiters: list[Waiter] = field(default_factory=list)
    # Self-healing (heal.py): whether a replica was ever ready (a first launch that fails
    # is the user's to fix, not retried), replicas that failed in a row, and when to try
    # again.
    ran: bool = False
    restarting: int = 0  # replicas missing because they failed (not lost), for the counts
    failures: int = 0
    retry_at: float = 0.0
    last_failure: float = 0.0

    @property
    def uid(self) -> str:
        return self.spec.model_uid

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state == p.ModelState.READY]

    def loading(self) -> bool:
        return any(r.state == p.ModelState.LOADING for r in self.replicas.values())

    def earlier(self, replica_id: str) -> bool:
        """Whether ``replica_id`` was a replica of an earlier model of this uid (one that
        was terminated and launched again, maybe with other settings)."""
        prefix, _, index = replica_id.rpartition("-")
        return prefix == self.uid and index.isdigit() and int(index) < self.first_index

    def coming(self, now: float) -> bool:
        """A replica is loading, or one that failed or was lost is about to be placed
        (the next reconcile, up to a heartbeat after ``retry_at``): requests may wait."""
        return self.loading() or now < self.retry_at + PLACING_GRACE


@dataclass
class InFlight:
    client: bytes
    submit: p.Submit
    replica_id: str
    worker: bytes
    started: bool = False  # a token reached the client: it can no longer be retried
    retried: bool = False  # this is its second try


def forget_oldest(entries: OrderedDict[K, V], bound: int, in_use: Callable[[K], bool]) -> list[K]:
    """Drop the oldest entries not ``in_use`` until at most ``bound`` remain (or none
    can go); the keys dropped."""
    dropped: list[K] = []
    while len(entries) > bound:
        stale = next((key for key in entries if not in_use(key)), None)
        if stale is None:
            break
        del entries[stale]
        dropped.append(stale)
    return dropped
