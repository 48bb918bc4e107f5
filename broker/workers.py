"""Workers as the broker sees them: READY makes a peer a worker (bound to the key that
first announced its id), HEARTBEAT and MODEL_EVENT report its replicas, and a worker that
goes silent, disconnects or restarts takes its replicas with it."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from xb.broker.cluster import Cluster
from xb.broker.heal import Healing
from xb.broker.management import Management
from xb.broker.outbox import Outbox
from xb.broker.requests import Requests
from xb.broker.state import DesiredState
from xb.broker.table import Replica, WorkerEntry, forget_oldest
from xb.core import protocol as p
from xb.core.settings import HEARTBEAT_LIVENESS
from xb.core.throttle import Throttle

log = logging.getLogger("xb.broker")

MAX_BINDINGS = 4096  # worker ids remembered with their keys


@dataclass
class Workers:
    cluster: Cluster
    outbox: Outbox
    state: DesiredState
    management: Management
    healing: Healing
    requests: Requests
    secure: bool  # peers come with CURVE keys: a worker id is bound to the first key
    interval: float  # seconds between heartbeats
    # A worker id belongs to the key that first announced it: no other peer can take it
    # over, whatever connection it comes from. Read back from the desired state.
    bindings: OrderedDict[str, str] = field(init=False)
    _by_id: dict[str, bytes] = field(default_factory=dict)  # worker id -> its connection
    _warn: Throttle = field(default_factory=lambda: Throttle(log))

    def __post_init__(self) -> None:
        self.bindings = OrderedDict(self.state.bindings()[-MAX_BINDINGS:])

    # ---- joining ----------------------------------------------------------------------

    def register(self, identity: bytes, ready: p.Ready, key: str) -> None:
        # Without CURVE every key is "": there is nothing to bind a worker id to.
        bound = self.bindings.get(ready.worker_id) if self.secure else None
        if bound is not None and bound != key:
            self.cluster.stats.refused += 1
            self._warn.warning(
                ready.worker_id,
                "stolen",
                "refused READY for worker %s from a peer with another key",
                ready.worker_id,
            )
            return
        if self.secure:
            self._bind(ready.worker_id, key)
        old = self._by_id.get(ready.worker_id)
        if old is not None and old != identity:
            self._move(old, identity)  # the same worker on a new connection
        known = self.cluster.workers.get(identity)
        if known is not None and known.pid != ready.pid:
            self.remove(identity, "worker restarted")
        elif known is not None:
            # The same worker announcing again (it lost touch with us): keep what still runs.
            hosted = {status.replica_id for status in ready.replicas}
            self.management.forget_replicas(identity, keep=hosted)
            known.memory, known.last_seen = ready.memory, time.monotonic()
            for status in ready.replicas:
                self.apply_status(known, status, adopt=True)
            return
        self._by_id[ready.worker_id] = identity
        worker = WorkerEntry(
            identity=identity,
            worker_id=ready.worker_id,
            host=ready.host,
            pid=ready.pid,
            memory=ready.memory,
            slots=max(ready.slots, 1),
            last_seen=time.monotonic(),
        )
        self.cluster.workers[identity] = worker
        log.info(
            "worker %s joined (%s, %d replicas)", ready.worker_id, ready.host, len(ready.replicas)
        )
        for status in ready.replicas:
            self.apply_status(worker, status, adopt=True)

    def _bind(self, worker_id: str, key: str) -> None:
        if worker_id not in self.bindings:
            self.state.bind(worker_id, key)
        self.bindings[worker_id] = key
        self.bindings.move_to_end(worker_id)
        # Forget the longest unheard-of worker ids that are not connected now.
        for stale in forget_oldest(self.bindings, MAX_BINDINGS, self._by_id.__contains__):
            self.state.unbind(stale)

    def _move(self, old: bytes, new: bytes) -> None:
        """A known worker came back on a new connection: what it ran is still its own."""
        worker = self.cluster.workers.pop(old, None)
        if worker is None:
            return
        worker.identity = new
        self.cluster.workers[new] = worker
        self._by_id[worker.worker_id] = new
        for model in self.cluster.models.values():
            for replica in model.replicas.values():
                if replica.worker == old:
                    replica.worker = new
        for flight in self.cluster.in_flight.values():
            if flight.worker == old:
                flight.worker = new
        log.info("worker %s reconnected", worker.worker_id)

    def unknown(self, peer: bytes, message: p.Message) -> None:
        # A worker the broker does not know (either restarted, or it reconnected and this
        # is its new connection): ask it to announce itself.
        self.outbox.send(peer, p.Disconnect("unknown worker; send READY"))

    # ---- reports ----------------------------------------------------------------------

    def heartbeat(self, worker: WorkerEntry, message: p.Heartbeat, frames: list[bytes]) -> None:
        if message.memory is not None:
            worker.memory = message.memory
        worker.queue_depth, worker.in_flight = message.queue_depth, message.in_flight
        worker.reported = {s.replica_id for s in message.replicas}
        worker.reported_at = worker.last_seen
        ready = [s for s in message.replicas if s.state == p.ModelState.READY]
        worker.slots = sum(s.slots for s in ready) or 1
        for status in message.replicas:
            self.apply_status(worker, status, adopt=False)

    def model_event(self, worker: WorkerEntry, message: p.ModelEvent, frames: list[bytes]) -> None:
        self.apply_status(worker, message.status, adopt=False)

    def disconnect(self, worker: WorkerEntry, message: p.Disconnect, frames: list[bytes]) -> None:
        self.remove(worker.identity, f"worker disconnected: {message.reason}")

    def apply_status(self, worker: WorkerEntry, status: p.ReplicaStatus, *, adopt: bool) -> None:
        model = self.cluster.models.get(status.model_uid)
        if model is None:
            # Nobody launched it (or it was terminated while the worker was away): the
            # desired state decides what runs, so it stops.
            if status.state != p.ModelState.FAILED:
                log.info(
                    "worker %s runs %s of unknown model %r; terminating it",
                    worker.worker_id,
                    status.replica_id,
                    status.model_uid,
                )
            self.outbox.send(worker.identity, p.Terminate(status.replica_id))
            return
        replica = model.replicas.get(status.replica_id)
        adopted = replica is None
        if replica is None:
            if not adopt or status.state == p.ModelState.FAILED or model.earlier(status.replica_id):
                self.outbox.send(worker.identity, p.Terminate(status.replica_id))
                return
            # A replica that kept running while its worker, or this broker, was away.
            replica = Replica(status.replica_id, model.uid, worker.identity, status.state)
            model.replicas[replica.replica_id] = replica
            log.info("took back replica %s on %s", replica.replica_id, worker.worker_id)
        if replica.worker != worker.identity:
            # Another worker runs the replica of that id now (this one was cut off, and
            # the model relaunched meanwhile): this worker's copy is nobody's.
            self.outbox.send(worker.identity, p.Terminate(status.replica_id))
            return
        ran = status.state == p.ModelState.READY and not model.ran
        if ran or (status.abilities and status.abilities != model.abilities):
            model.ran = model.ran or ran
            model.abilities = list(status.abilities or model.abilities)
            self.state.save(model)
        replica.progress = status.progress
        replica.cached_tokens = status.cached_tokens
        more_slots = status.slots > replica.slots
        replica.slots = max(status.slots, 1)
        if replica.state == status.state:
            if adopted:
                self.healing.trim(model)
            if more_slots or adopted:
                self.requests.dispatch(model)
            return
        replica.state, replica.error = status.state, status.error
        if status.state != p.ModelState.LOADING:
            worker.reserved = max(worker.reserved - replica.reserved, 0)
            replica.reserved = 0
        log.info(
            "replica %s on %s is %s %s",
            replica.replica_id,
            worker.worker_id,
            status.state,
            status.error or "",
        )
        # A launch or scale-up waiting on this replica answers for its failure; any other
        # failed replica is healed.
        waited_on = any(replica.replica_id in w.replica_ids for w in model.waiters)
        self.management.check_waiters(model)
        if (
            status.state == p.ModelState.FAILED
            and not waited_on
            and model.uid in self.cluster.models
        ):
            self.healing.replica_failed(model, replica)
        if model.uid in self.cluster.models:
            self.healing.trim(model)
            self.requests.dispatch(model)

    # ---- leaving ----------------------------------------------------------------------

    def send_heartbeats(self) -> None:
        heartbeat = p.encode(p.Heartbeat())
        for identity in self.cluster.workers:
            self.outbox.forward(identity, heartbeat)

    def purge(self, now: float) -> None:
        """Remove workers that missed ``HEARTBEAT_LIVENESS`` intervals."""
        deadline = self.interval * HEARTBEAT_LIVENESS
        for identity, worker in list(self.cluster.workers.items()):
            if now - worker.last_seen > deadline:
                self.remove(
                    identity, f"worker {worker.worker_id} missed heartbeats for {deadline:.1f} s"
                )

    def remove(self, identity: bytes, reason: str) -> None:
        worker = self.cluster.workers.pop(identity, None)
        if worker is None:
            return  # already gone: a send to it failed while it was being removed
        if self._by_id.get(worker.worker_id) == identity:
            del self._by_id[worker.worker_id]
        log.warning("dropping worker %s: %s", worker.worker_id, reason)
        self.management.forget_replicas(identity, set(), reason)
