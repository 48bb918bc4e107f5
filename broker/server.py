"""The broker: one ROUTER socket that workers and facades connect to, and one poll loop.

Workers announce themselves with READY and then send HEARTBEAT, MODEL_EVENT and the
reply frames of the requests they run. Facades send SUBMIT, CANCEL and management calls.
Any frame the broker cannot read is counted, logged and dropped.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import zmq

from xb import protocol as p
from xb.broker.affinity import Affinity
from xb.broker.management import ModelManagement
from xb.broker.routing import LeastLoaded, RoutingPolicy
from xb.broker.table import InFlight, Model, Replica, WorkerEntry
from xb.settings import HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS

log = logging.getLogger("xb.broker")

DEFAULT_MAX_QUEUE = 256


class Broker(ModelManagement):
    def __init__(
        self,
        bind: str,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        max_queue: int = DEFAULT_MAX_QUEUE,
        policy: RoutingPolicy | None = None,
    ) -> None:
        self.interval = heartbeat_interval
        self.max_queue = max_queue
        self.policy = policy or LeastLoaded()
        self.workers: dict[bytes, WorkerEntry] = {}
        self.models: dict[str, Model] = {}
        self.in_flight: dict[str, InFlight] = {}
        self.affinity = Affinity()
        self.malformed = 0
        self.instance = uuid.uuid4().hex
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_BODY_BYTES + 4096)
        # A worker that reconnects with its old identity takes over from its stale connection.
        self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self._sock.bind(bind)
        self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    # ---- loop -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        next_heartbeat = time.monotonic() + self.interval
        try:
            while not self._stop.is_set():
                timeout = max(0.0, min(next_heartbeat - time.monotonic(), 0.25))
                if self._sock.poll(int(timeout * 1000)):
                    self._drain()
                now = time.monotonic()
                if now >= next_heartbeat:
                    next_heartbeat = now + self.interval
                    self.send_heartbeats()
                    self.purge_workers(now)
        finally:
            self._sock.close(linger=0)
            self._ctx.term()

    def _drain(self) -> None:
        for _ in range(1000):  # bounded, so heartbeats still go out under load
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.process(frames)

    def process(self, frames: list[bytes]) -> None:
        """Handle one multipart message; nothing a peer sends can raise out of here."""
        identity, body = frames[0], frames[1:]
        try:
            message = p.decode(body)
        except p.ProtocolError as exc:
            self.malformed += 1
            log.warning("dropped malformed frame from %r: %s", identity[:32], exc)
            return
        try:
            if identity in self.workers or isinstance(message, p.Ready):
                self.process_worker(identity, message, body)
            else:
                self.process_client(identity, message)
        except Exception as exc:
            self.malformed += 1
            log.exception("error handling %s from %r; dropped", type(message).__name__, identity)
            request_id = getattr(message, "request_id", None)
            if identity not in self.workers and request_id:
                # Nobody may wait for an answer that will never come.
                self._error(identity, request_id, p.ErrorCode.INTERNAL, f"broker error: {exc}")

    def _send(self, identity: bytes, message: p.Message) -> None:
        self._sock.send_multipart([identity, *p.encode(message)])

    # ---- workers ----------------------------------------------------------------------

    def process_worker(self, identity: bytes, message: p.Message, frames: list[bytes]) -> None:
        if isinstance(message, p.Ready):
            self._register(identity, message)
            return
        worker = self.workers[identity]
        worker.last_seen = time.monotonic()
        if isinstance(message, p.Partial):
            flight = self.in_flight.get(message.request_id)
            if flight is not None and flight.worker == identity:
                flight.started = True
                self._sock.send_multipart([flight.client, *frames])
        elif isinstance(message, p.Final | p.Error):
            self._finish(worker, message, frames)
        elif isinstance(message, p.Heartbeat):
            if message.memory is not None:
                worker.memory = message.memory
            worker.queue_depth, worker.in_flight = message.queue_depth, message.in_flight
            for status in message.replicas:
                self._apply_status(worker, status, adopt=False)
        elif isinstance(message, p.ModelEvent):
            self._apply_status(worker, message.status, adopt=False)
        elif isinstance(message, p.Disconnect):
            self._remove_worker(identity, f"worker disconnected: {message.reason}")
        else:
            log.warning(
                "unexpected %s from worker %s dropped", type(message).__name__, worker.worker_id
            )

    def _register(self, identity: bytes, ready: p.Ready) -> None:
        known = self.workers.get(identity)
        if known is not None and known.pid != ready.pid:
            self._remove_worker(identity, "worker restarted")
        elif known is not None:
            # The same worker announcing again (it lost touch with us): keep what still runs.
            hosted = {status.replica_id for status in ready.replicas}
            self._forget_replicas(identity, keep=hosted)
            known.memory, known.last_seen = ready.memory, time.monotonic()
            for status in ready.replicas:
                self._apply_status(known, status, adopt=True)
            return
        self.workers[identity] = WorkerEntry(
            identity=identity,
            worker_id=ready.worker_id,
            host=ready.host,
            pid=ready.pid,
            memory=ready.memory,
            slots=max(ready.slots, 1),
            last_seen=time.monotonic(),
        )
        log.info(
            "worker %s joined (%s, %d replicas)", ready.worker_id, ready.host, len(ready.replicas)
        )
        for status in ready.replicas:
            self._apply_status(self.workers[identity], status, adopt=True)

    def _apply_status(self, worker: WorkerEntry, status: p.ReplicaStatus, *, adopt: bool) -> None:
        model = self.models.get(status.model_uid)
        if model is None:
            if not adopt:
                return
            # The broker restarted while the worker kept the model: take it back.
            spec = status.spec or p.ModelSpec(status.model_uid, status.model_name)
            model = Model(spec=spec, replica=0, created=int(time.time()))
            self.models[model.uid] = model
        replica = model.replicas.get(status.replica_id)
        if replica is None:
            if not adopt:
                return
            replica = Replica(status.replica_id, model.uid, worker.identity, status.state)
            model.replicas[replica.replica_id] = replica
            model.replica = max(model.replica, len(model.replicas))
        if replica.worker != worker.identity:
            return  # another worker's replica of that id: not this worker's to report
        if status.abilities:
            model.abilities = list(status.abilities)
        replica.progress = status.progress
        replica.cached_tokens = status.cached_tokens
        more_slots = status.slots > replica.slots
        replica.slots = max(status.slots, 1)
        if replica.state == status.state:
            if more_slots:
                self.dispatch(model)
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
        self._check_waiters(model)
        self.dispatch(model)

    def _finish(self, worker: WorkerEntry, message: p.Final | p.Error, frames: list[bytes]) -> None:
        flight = self.in_flight.get(message.request_id)
        if flight is None or flight.worker != worker.identity:
            return  # a cancelled, terminated or retried-elsewhere request's last frame
        del self.in_flight[message.request_id]
        self._sock.send_multipart([flight.client, *frames])
        model = self.models.get(flight.submit.model_uid)
        if model is None:
            return
        if isinstance(message, p.Final):
            worker.served += 1
            model.served += 1
            model.tokens += message.usage.completion_tokens
            self.affinity.remember(flight.submit.conversation, flight.replica_id)
        replica = model.replicas.get(flight.replica_id)
        if replica is not None:
            replica.in_flight = max(replica.in_flight - 1, 0)
        self.dispatch(model)

    def send_heartbeats(self) -> None:
        for identity in self.workers:
            self._send(identity, p.Heartbeat())

    def purge_workers(self, now: float) -> None:
        """Remove workers that missed ``HEARTBEAT_LIVENESS`` intervals."""
        deadline = self.interval * HEARTBEAT_LIVENESS
        for identity, worker in list(self.workers.items()):
            if now - worker.last_seen > deadline:
                self._remove_worker(
                    identity, f"worker {worker.worker_id} missed heartbeats for {deadline:.1f} s"
                )

    def _remove_worker(self, identity: bytes, reason: str) -> None:
        worker = self.workers.pop(identity)
        log.warning("dropping worker %s: %s", worker.worker_id, reason)
        self._forget_replicas(identity, set(), reason)

    def _forget_replicas(self, identity: bytes, keep: set[str], reason: str = "") -> None:
        """Drop the replicas on worker ``identity`` not in ``keep``, and end their requests."""
        lost = {
            rid
            for model in self.models.values()
            for rid, replica in model.replicas.items()
            if replica.worker == identity and rid not in keep
        }
        reason = reason or "it no longer hosts the replica"
        self._remove_replicas(lost, f"the worker was lost: {reason}", terminate=False)

    # ---- routing ----------------------------------------------------------------------

    def dispatch(self, model: Model) -> None:
        """Send queued requests of ``model`` to replicas with free slots."""
        if not model.ready() and not model.loading():
            while model.queue:
                client, submit = model.queue.popleft()
                self._error(
                    client,
                    submit.request_id,
                    p.ErrorCode.NO_REPLICA,
                    f"model {model.uid!r} has no ready replica",
                )
            return
        while model.queue:
            preferred = self.affinity.lookup(model.queue[0][1].prefix_keys)
            replica = self.policy.choose(model.ready(), preferred)
            if replica is None:
                return
            client, submit = model.queue.popleft()
            replica.in_flight += 1
            self.in_flight[submit.request_id] = InFlight(
                client, submit, replica.replica_id, replica.worker
            )
            request = p.Request(submit.request_id, replica.replica_id, submit.kind, submit.params)
            self._send(replica.worker, request)

    # ---- facades ----------------------------------------------------------------------

    def process_client(self, client: bytes, message: p.Message) -> None:
        if isinstance(message, p.Submit):
            self._submit(client, message)
        elif isinstance(message, p.Cancel):
            self._cancel(message.request_id)
        elif isinstance(message, p.LaunchModel):
            self._launch(client, message)
        elif isinstance(message, p.TerminateModel):
            self._terminate(client, message)
        elif isinstance(message, p.ScaleModel):
            self._scale(client, message)
        elif isinstance(message, p.ListModels):
            infos = [self._model_info(m, message.request_id) for m in self.models.values()]
            self._send(client, p.ModelList(message.request_id, infos))
        elif isinstance(message, p.DescribeModel):
            model = self.models.get(message.model_uid)
            if model is None:
                self._unknown_model(client, message.request_id, message.model_uid)
            else:
                self._send(client, self._model_info(model, message.request_id))
        elif isinstance(message, p.ClusterInfo):
            self._send(client, self._cluster(message.request_id))
        elif isinstance(message, p.Ping):
            self._send(client, p.Pong(message.request_id, self.instance))
        elif isinstance(message, p.Heartbeat):
            # A worker the broker does not know (it restarted): ask it to announce itself.
            self._send(client, p.Disconnect("unknown worker; send READY"))
        else:
            self.malformed += 1
            log.warning("unexpected %s from %r dropped", type(message).__name__, client[:32])

    def _submit(self, client: bytes, submit: p.Submit) -> None:
        model = self.models.get(submit.model_uid)
        if model is None:
            self._unknown_model(client, submit.request_id, submit.model_uid)
            return
        ability = p.ABILITY[submit.kind]
        if model.abilities and ability not in model.abilities:
            self._error(
                client,
                submit.request_id,
                p.ErrorCode.INVALID_REQUEST,
                f"model {model.uid!r} cannot {ability} (it can: {', '.join(model.abilities)})",
            )
            return
        if model.request_limits is not None:
            busy = len(model.queue) + sum(r.in_flight for r in model.replicas.values())
            if busy >= model.request_limits:
                self._error(
                    client,
                    submit.request_id,
                    p.ErrorCode.QUEUE_FULL,
                    f"model {model.uid!r} is at its request_limits of {model.request_limits}; "
                    "retry later",
                )
                return
        if len(model.queue) >= self.max_queue:
            self._error(
                client,
                submit.request_id,
                p.ErrorCode.QUEUE_FULL,
                f"model {model.uid!r} has {len(model.queue)} requests waiting; retry later",
            )
            return
        model.queue.append((client, submit))
        self.dispatch(model)  # which also refuses it when no replica is ready or loading

    def _cancel(self, request_id: str) -> None:
        flight = self.in_flight.get(request_id)
        if flight is not None:
            self._send(flight.worker, p.Cancel(request_id))
            return
        for model in self.models.values():
            for entry in list(model.queue):
                if entry[1].request_id == request_id:
                    model.queue.remove(entry)
                    self._error(entry[0], request_id, p.ErrorCode.CANCELLED, "cancelled")


def serve_in_thread(broker: Broker) -> threading.Thread:
    thread = threading.Thread(target=broker.run, name="xb-broker", daemon=True)
    thread.start()
    return thread
