"""The broker: one ROUTER socket that workers and facades connect to, and one poll loop.

Workers announce themselves with READY and then send HEARTBEAT, MODEL_EVENT and the
reply frames of the requests they run. Facades send SUBMIT, CANCEL and management calls.
Any frame the broker cannot read is counted, logged and dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import zmq

from xb import protocol as p
from xb.broker.placement import PlacementError, place
from xb.broker.routing import LeastLoaded, RoutingPolicy
from xb.broker.table import InFlight, Model, Replica, Waiter, WorkerEntry
from xb.demo_model import DEMO_MODEL_NAME
from xb.modelfile import ModelFileError, estimate_memory, read_gguf_info
from xb.settings import HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS

log = logging.getLogger("xb.broker")

DEFAULT_MAX_QUEUE = 256


class Broker:
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
        self.malformed = 0
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
        except Exception:
            self.malformed += 1
            log.exception("error handling %s from %r; dropped", type(message).__name__, identity)

    def _send(self, identity: bytes, message: p.Message) -> None:
        self._sock.send_multipart([identity, *p.encode(message)])

    def _error(self, identity: bytes, request_id: str, code: p.ErrorCode, text: str) -> None:
        self._send(identity, p.Error(request_id, code, text))

    # ---- workers ----------------------------------------------------------------------

    def process_worker(self, identity: bytes, message: p.Message, frames: list[bytes]) -> None:
        if isinstance(message, p.Ready):
            self._register(identity, message)
            return
        worker = self.workers[identity]
        worker.last_seen = time.monotonic()
        if isinstance(message, p.Partial):
            flight = self.in_flight.get(message.request_id)
            if flight is not None:
                flight.started = True
                self._sock.send_multipart([flight.client, *frames])
        elif isinstance(message, p.Final | p.Error):
            if isinstance(message, p.Final) and message.request_id in self.in_flight:
                worker.served += 1
            self._finish(message.request_id, frames)
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
            model = Model(
                uid=status.model_uid,
                name=status.model_name,
                path=None,
                n_ctx=0,
                model_format="gguf",
                replica=0,
                created=int(time.time()),
            )
            self.models[model.uid] = model
        replica = model.replicas.get(status.replica_id)
        if replica is None:
            if not adopt:
                return
            replica = Replica(status.replica_id, model.uid, worker.identity, status.state)
            model.replicas[replica.replica_id] = replica
            model.replica = max(model.replica, len(model.replicas))
        if status.abilities:
            model.abilities = list(status.abilities)
        if replica.state == status.state:
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
        self._check_launch(model)
        self.dispatch(model)

    def _finish(self, request_id: str, frames: list[bytes]) -> None:
        flight = self.in_flight.pop(request_id, None)
        if flight is None:
            return  # a cancelled or terminated request's last frame
        self._sock.send_multipart([flight.client, *frames])
        model = self.models.get(flight.submit.model_uid)
        if model is None:
            return
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
        reason = reason or "the worker no longer hosts its replica"
        touched: list[Model] = []
        lost: set[str] = set()
        for model in self.models.values():
            gone = [
                rid for rid, r in model.replicas.items() if r.worker == identity and rid not in keep
            ]
            for rid in gone:
                del model.replicas[rid]
            lost.update(gone)
            if gone:
                touched.append(model)
        for request_id, flight in list(self.in_flight.items()):
            if flight.replica_id not in lost:
                continue
            del self.in_flight[request_id]
            owner = self.models.get(flight.submit.model_uid)
            if not flight.started and owner is not None and owner.ready():
                owner.queue.appendleft((flight.client, flight.submit))  # no token sent: retry
            else:
                self._error(
                    flight.client,
                    request_id,
                    p.ErrorCode.WORKER_LOST,
                    f"the worker serving this request was lost ({reason})",
                )
        for model in touched:
            self._check_launch(model)
            self.dispatch(model)

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
        slots = {w.identity: w.slots for w in self.workers.values()}
        while model.queue:
            replica = self.policy.choose(model.ready(), slots)
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
            self._send(client, p.Pong(message.request_id))
        elif isinstance(message, p.Heartbeat):
            # A worker the broker does not know (it restarted): ask it to announce itself.
            self._send(client, p.Disconnect("unknown worker; send READY"))
        else:
            self.malformed += 1
            log.warning("unexpected %s from %r dropped", type(message).__name__, client[:32])

    def _unknown_model(self, client: bytes, request_id: str, uid: str) -> None:
        known = ", ".join(sorted(self.models)) or "none"
        self._error(
            client,
            request_id,
            p.ErrorCode.UNKNOWN_MODEL,
            f"model {uid!r} is not running (running: {known}); launch it first",
        )

    def _submit(self, client: bytes, submit: p.Submit) -> None:
        model = self.models.get(submit.model_uid)
        if model is None:
            self._unknown_model(client, submit.request_id, submit.model_uid)
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

    def _launch(self, client: bytes, launch: p.LaunchModel) -> None:
        rid = launch.request_id
        uid = launch.model_uid or self._fresh_uid(launch.model_name)
        if uid in self.models:
            self._error(
                client,
                rid,
                p.ErrorCode.DUPLICATE_MODEL,
                f"model uid {uid!r} is already running; pick another uid or terminate it",
            )
            return
        if launch.replica < 1:
            self._error(client, rid, p.ErrorCode.INVALID_REQUEST, "replica must be at least 1")
            return
        if not launch.model_path and launch.model_name != DEMO_MODEL_NAME:
            self._error(
                client,
                rid,
                p.ErrorCode.INVALID_REQUEST,
                f"model {launch.model_name!r} is not built in (built in: "
                f"{DEMO_MODEL_NAME}); give model_path, a GGUF file on the worker",
            )
            return
        candidates = list(self.workers.values())
        if launch.worker:
            candidates = [w for w in candidates if launch.worker in (w.worker_id, w.host)]
            if not candidates:
                known = ", ".join(w.worker_id for w in self.workers.values()) or "none"
                self._error(
                    client,
                    rid,
                    p.ErrorCode.UNKNOWN_WORKER,
                    f"no worker named {launch.worker!r} (connected: {known})",
                )
                return
        try:
            need = self._estimate(launch)
            chosen = place(candidates, need, launch.replica, {})
        except (PlacementError, ModelFileError) as exc:
            code = (
                p.ErrorCode.LAUNCH_REFUSED
                if isinstance(exc, PlacementError)
                else p.ErrorCode.INVALID_REQUEST
            )
            self._error(client, rid, code, f"cannot launch {uid!r}: {exc}")
            return
        model = Model(
            uid=uid,
            name=launch.model_name,
            path=launch.model_path,
            n_ctx=launch.n_ctx,
            model_format="gguf",
            replica=launch.replica,
            created=int(time.time()),
        )
        model.launch_waiters.append(Waiter(client, rid))
        self.models[uid] = model
        spec = p.ModelSpec(uid, launch.model_name, launch.model_path, launch.n_ctx)
        for index, worker in enumerate(chosen):
            replica_id = f"{uid}-{index}"
            model.replicas[replica_id] = Replica(
                replica_id, uid, worker.identity, p.ModelState.LOADING, reserved=need
            )
            worker.reserved += need
            self._send(worker.identity, p.Launch(replica_id, spec))
        log.info(
            "launching %s (%s) on %s",
            uid,
            launch.model_name,
            ", ".join(w.worker_id for w in chosen),
        )

    def _fresh_uid(self, name: str) -> str:
        if name not in self.models:
            return name
        n = 1
        while f"{name}-{n}" in self.models:
            n += 1
        return f"{name}-{n}"

    @staticmethod
    def _estimate(launch: p.LaunchModel) -> int:
        """Bytes the model needs, when its file is readable here; 0 leaves it to the worker."""
        if not launch.model_path:
            return 0
        path = Path(launch.model_path).expanduser()
        if not path.exists():
            return 0  # the path may exist on the worker's machine only
        return estimate_memory(read_gguf_info(path), launch.n_ctx)

    def _check_launch(self, model: Model) -> None:
        if not model.launch_waiters:
            return
        failed = [r for r in model.replicas.values() if r.state == p.ModelState.FAILED]
        if failed or len(model.replicas) < model.replica:
            reason = failed[0].error if failed else "its worker was lost while loading"
            for waiter in model.launch_waiters:
                self._error(
                    waiter.client,
                    waiter.request_id,
                    p.ErrorCode.MODEL_FAILED,
                    f"model {model.uid!r} failed to load: {reason}",
                )
            model.launch_waiters.clear()
            self._drop_model(model, "launch failed")
        elif all(r.state == p.ModelState.READY for r in model.replicas.values()):
            for waiter in model.launch_waiters:
                self._send(waiter.client, self._model_info(model, waiter.request_id))
            model.launch_waiters.clear()

    def _terminate(self, client: bytes, message: p.TerminateModel) -> None:
        model = self.models.get(message.model_uid)
        if model is None:
            self._unknown_model(client, message.request_id, message.model_uid)
            return
        for waiter in model.launch_waiters:
            self._error(
                waiter.client,
                waiter.request_id,
                p.ErrorCode.CANCELLED,
                f"model {model.uid!r} was terminated while loading",
            )
        model.launch_waiters.clear()
        self._drop_model(model, "terminated")
        self._send(client, p.Ack(message.request_id))

    def _drop_model(self, model: Model, reason: str) -> None:
        """Terminate every replica of ``model`` and end its requests."""
        self.models.pop(model.uid, None)
        for replica in model.replicas.values():
            worker = self.workers.get(replica.worker)
            if worker is not None:
                worker.reserved = max(worker.reserved - replica.reserved, 0)
                self._send(worker.identity, p.Terminate(replica.replica_id))
        while model.queue:
            client, submit = model.queue.popleft()
            self._error(
                client,
                submit.request_id,
                p.ErrorCode.UNKNOWN_MODEL,
                f"model {model.uid!r} was {reason}",
            )
        for request_id, flight in list(self.in_flight.items()):
            if flight.submit.model_uid == model.uid:
                del self.in_flight[request_id]
                self._error(
                    flight.client,
                    request_id,
                    p.ErrorCode.UNKNOWN_MODEL,
                    f"model {model.uid!r} was {reason}",
                )

    # ---- descriptions -----------------------------------------------------------------

    def _model_info(self, model: Model, request_id: str) -> p.ModelInfo:
        places = []
        for replica in model.replicas.values():
            worker = self.workers.get(replica.worker)
            places.append(
                p.ReplicaPlace(
                    replica_id=replica.replica_id,
                    worker_id=worker.worker_id if worker else "",
                    host=worker.host if worker else "",
                    state=replica.state,
                    error=replica.error,
                )
            )
        return p.ModelInfo(
            request_id=request_id,
            model_uid=model.uid,
            model_name=model.name,
            model_path=model.path,
            model_format=model.model_format,
            n_ctx=model.n_ctx,
            abilities=model.abilities,
            replica=model.replica,
            replicas=places,
            created=model.created,
            queued=len(model.queue),
        )

    def _cluster(self, request_id: str) -> p.Cluster:
        now = time.monotonic()
        infos = []
        for worker in self.workers.values():
            statuses = [
                p.ReplicaStatus(r.replica_id, m.uid, m.name, r.state, r.error, r.in_flight)
                for m in self.models.values()
                for r in m.replicas.values()
                if r.worker == worker.identity
            ]
            infos.append(worker.info(now, statuses))
        return p.Cluster(request_id, infos)


def serve_in_thread(broker: Broker) -> threading.Thread:
    thread = threading.Thread(target=broker.run, name="xb-broker", daemon=True)
    thread.start()
    return thread
