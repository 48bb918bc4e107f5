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
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from xb.broker.affinity import Affinity
from xb.broker.cluster import Cluster
from xb.broker.families import Families
from xb.broker.management import ModelManagement
from xb.broker.peers import authenticate
from xb.broker.routing import LeastLoaded, RoutingPolicy
from xb.broker.scheduler import FirstComeFirstServed
from xb.broker.state import DesiredState
from xb.broker.table import InFlight, Model, Queued, Replica, WorkerEntry
from xb.broker.views import cluster_page, model_info, page_of
from xb.core import protocol as p
from xb.core.keys import broker_keys
from xb.core.registry import Registry
from xb.core.settings import HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS
from xb.core.throttle import Throttle
from xb.core.transport import configure_router

log = logging.getLogger("xb.broker")

DEFAULT_MAX_QUEUE = 256  # requests waiting per model


MAX_BINDINGS = 4096  # worker ids remembered with their keys

# The socket calls of the hot path, without pyzmq's Python layer (see ``_drain``).
_socket_recv, _socket_send = zmq.backend.Socket.recv, zmq.backend.Socket.send
_MORE = int(zmq.SNDMORE)
_NOBLOCK_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_READY = p.encode(p.Ready("", "", 0, p.Memory(0, 0), 0))[1]  # READY's command frame

# What a worker sends once it is known; from an unknown peer, these ask it to announce itself.
WORKER_SENDS = (p.Heartbeat, p.ModelEvent, p.Partial, p.Final, p.Error)
# Messages no peer sends to the broker: its own replies and orders, and what passes only
# between a worker and its model processes. Every other message has a handler.
NOT_FOR_THE_BROKER = frozenset(
    {p.Request, p.Launch, p.Terminate, p.Pong, p.ModelInfo, p.ModelList, p.Cluster, p.Ack}
    | {p.Families, p.Share}
)


class Broker(ModelManagement):
    def __init__(
        self,
        bind: str,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        max_queue: int = DEFAULT_MAX_QUEUE,
        policy: RoutingPolicy | None = None,
        home: Path | None = None,
        state: Path | None = None,
    ) -> None:
        """``home``: where the broker's keys and allow-list are; None serves plain,
        unauthenticated peers (``--insecure``). ``state``: the file that keeps the desired
        state (``state.py``) across restarts; None keeps it in memory."""
        self.interval = heartbeat_interval
        self.policy = policy or LeastLoaded()
        affinity = Affinity()
        self.cluster = Cluster(FirstComeFirstServed(self.policy, affinity, max_queue), affinity)
        self.malformed = 0
        self.handler_errors = 0  # exceptions out of the broker's own handlers: its bugs
        self.dropped = 0  # frames a peer could not be sent
        self.refused = 0  # READYs for a worker id that belongs to another key
        self.retries = 0
        self.replacements = 0
        self.restarts = 0
        self.instance = uuid.uuid4().hex
        # A worker id belongs to the key that first announced it: no other peer can take
        # it over, whatever connection it comes from.
        self.bindings: OrderedDict[str, str] = OrderedDict()
        self._by_id: dict[str, bytes] = {}  # worker id -> the identity of its connection
        # Peers found gone by a send. They are dealt with once the message at hand is
        # handled, never in the middle of it (a send inside a loop over requests, say).
        self._gone: set[bytes] = set()
        self._warn = Throttle(log)
        self.state = DesiredState(state)
        self.families = Families(Registry(state.parent if state is not None else None))
        for worker_id, bound in self.state.bindings()[-MAX_BINDINGS:]:
            self.bindings[worker_id] = bound
        self._restore()
        # Restored models wait for their workers to announce what still runs before the
        # missing replicas are placed again.
        self.settle_until = (
            time.monotonic() + heartbeat_interval * HEARTBEAT_LIVENESS
            if self.cluster.models
            else 0.0
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
        # What each kind of peer may send, and who handles it (READY is read before either
        # table, since it is what makes a peer a worker).
        self._from_workers: dict[type, Callable[[WorkerEntry, Any, list[bytes]], None]] = {
            p.Partial: self._partial,
            p.Final: self._finish,
            p.Error: self._finish,
            p.Heartbeat: self._heartbeat,
            p.ModelEvent: self._model_event,
            p.Disconnect: self._disconnect,
        }
        self._from_facades: dict[type, Callable[[bytes, Any], None]] = {
            p.Submit: self._submit,
            p.Cancel: self._cancel,
            p.LaunchModel: self._launch,
            p.TerminateModel: self._terminate,
            p.ScaleModel: self._scale,
            p.ListModels: self._list_models,
            p.DescribeModel: self._describe_model,
            p.ClusterInfo: self._cluster_info,
            p.RegisterFamily: self._families_call,
            p.UnregisterFamily: self._families_call,
            p.ListFamilies: self._families_call,
            p.Ping: self._ping,
            **dict.fromkeys(WORKER_SENDS, self._unknown_worker),
        }

    def handled(self) -> set[type]:
        """The message types some handler table takes (READY apart)."""
        return {p.Ready, *self._from_workers, *self._from_facades}

    # ---- loop -------------------------------------------------------------------------

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
                    try:
                        self.send_heartbeats()
                        self.purge_workers(now)
                        self.reconcile(now)
                        self._bury()
                    except Exception:  # the loop must outlive any one bad state
                        log.exception("error in the broker's periodic work")
        finally:
            self.close()

    def close(self) -> None:
        """Let go of the socket and the state file (``run`` does when it ends)."""
        if self._sock.closed:
            return
        self.state.close()
        self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def _drain(self) -> None:
        # pyzmq's recv_multipart and send_multipart cost more than the broker's own work
        # on a frame (bench/broker.py: 9.9 and 5.9 us a message, against 3.7 and 1.1 us
        # for the Cython calls underneath), so the hot path calls those directly.
        sock = self._sock
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
            self.process(frames, key)

    def process(self, frames: list[bytes], key: str = "") -> None:
        """Handle one multipart message from the peer whose public key is ``key``;
        nothing a peer sends can raise out of here."""
        try:
            self._process(frames, key)
        finally:
            self._bury()

    def _bury(self) -> None:
        """Deal with the peers that sends found gone (which may find more gone)."""
        while self._gone:
            identity = self._gone.pop()
            try:
                self._peer_gone(identity)
            except Exception:  # the loop must outlive any one bad state
                log.exception("error removing a peer that went away")

    def _process(self, frames: list[bytes], key: str) -> None:
        identity, body = frames[0], frames[1:]
        try:
            message = p.decode(body)
        except p.ProtocolError as exc:
            self.malformed += 1
            self._warn.warning(identity.hex(), "malformed", "dropped malformed frame: %s", exc)
            return
        try:
            if isinstance(message, p.Ready):
                self._register(identity, message, key)
            elif identity in self.cluster.workers:
                self.process_worker(identity, message, body)
            else:
                self.process_client(identity, message)
        except Exception as exc:
            # A frame that decoded is the peer's right; what fails on it is the broker's
            # bug, counted apart from malformed frames and logged with its traceback.
            self.handler_errors += 1
            self._warn.exception(
                identity.hex(),
                "error",
                "error handling %s from %r; dropped",
                type(message).__name__,
                identity,
            )
            request_id = getattr(message, "request_id", None)
            if identity not in self.cluster.workers and request_id:
                # Nobody may wait for an answer that will never come.
                self._error(identity, request_id, p.ErrorCode.INTERNAL, f"broker error: {exc}")

    def _send(self, identity: bytes, message: p.Message) -> None:
        self._deliver(identity, p.encode(message))

    def _deliver(self, identity: bytes, frames: list[bytes]) -> bool:
        """Send without waiting; False when the peer is gone or too far behind."""
        sock = self._sock
        try:
            # The first part decides: a peer that is gone or full refuses it.
            _socket_send(sock, identity, _NOBLOCK_MORE)
            for frame in frames[:-1]:
                _socket_send(sock, frame, _MORE)
            _socket_send(sock, frames[-1], 0)
        except zmq.Again:  # its queue is full: it reads too slowly, or not at all
            self._warn.warning(identity.hex(), "full", "dropped a frame for a peer that lags")
            self.dropped += 1
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.dropped += 1
            self._gone.add(identity)
            return False
        return True

    def _peer_gone(self, identity: bytes) -> None:
        """A peer's connection is closed: a worker's requests fail over, a facade's stop."""
        if identity in self.cluster.workers:
            self._remove_worker(identity, "its connection closed")
            return
        for request_id, flight in list(self.cluster.in_flight.items()):
            if flight.client == identity and self.cluster.in_flight.get(request_id) is flight:
                del self.cluster.in_flight[request_id]
                self._release_slot(flight)
                self._deliver(flight.worker, p.encode(p.Cancel(request_id)))
        self.cluster.scheduler.withdraw(identity)
        for model in self.cluster.models.values():
            model.waiters = [w for w in model.waiters if w.client != identity]

    def _release_slot(self, flight: InFlight) -> None:
        model = self.cluster.models.get(flight.submit.model_uid)
        replica = model.replicas.get(flight.replica_id) if model else None
        if replica is not None:
            replica.in_flight = max(replica.in_flight - 1, 0)

    # ---- workers ----------------------------------------------------------------------

    def process_worker(self, identity: bytes, message: p.Message, frames: list[bytes]) -> None:
        worker = self.cluster.workers[identity]
        worker.last_seen = time.monotonic()
        handler = self._from_workers.get(type(message))
        if handler is not None:
            handler(worker, message, frames)
            return
        self.malformed += 1
        self._warn.warning(
            worker.worker_id,
            "unexpected",
            "unexpected %s from worker %s dropped",
            type(message).__name__,
            worker.worker_id,
        )

    def _partial(self, worker: WorkerEntry, message: p.Partial, frames: list[bytes]) -> None:
        flight = self.cluster.in_flight.get(message.request_id)
        if flight is not None and flight.worker == worker.identity:
            flight.started = True
            self._deliver(flight.client, frames)

    def _heartbeat(self, worker: WorkerEntry, message: p.Heartbeat, frames: list[bytes]) -> None:
        if message.memory is not None:
            worker.memory = message.memory
        worker.queue_depth, worker.in_flight = message.queue_depth, message.in_flight
        worker.reported = {s.replica_id for s in message.replicas}
        worker.reported_at = worker.last_seen
        ready = [s for s in message.replicas if s.state == p.ModelState.READY]
        worker.slots = sum(s.slots for s in ready) or 1
        for status in message.replicas:
            self._apply_status(worker, status, adopt=False)

    def _model_event(self, worker: WorkerEntry, message: p.ModelEvent, frames: list[bytes]) -> None:
        self._apply_status(worker, message.status, adopt=False)

    def _disconnect(self, worker: WorkerEntry, message: p.Disconnect, frames: list[bytes]) -> None:
        self._remove_worker(worker.identity, f"worker disconnected: {message.reason}")

    def _register(self, identity: bytes, ready: p.Ready, key: str) -> None:
        # Without CURVE every key is "": there is nothing to bind a worker id to.
        bound = self.bindings.get(ready.worker_id) if self.secure else None
        if bound is not None and bound != key:
            self.refused += 1
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
            self._move_worker(old, identity)  # the same worker on a new connection
        known = self.cluster.workers.get(identity)
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
        self._by_id[ready.worker_id] = identity
        self.cluster.workers[identity] = WorkerEntry(
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
            self._apply_status(self.cluster.workers[identity], status, adopt=True)

    def _bind(self, worker_id: str, key: str) -> None:
        if worker_id not in self.bindings:
            self.state.bind(worker_id, key)
        self.bindings[worker_id] = key
        self.bindings.move_to_end(worker_id)
        while len(self.bindings) > MAX_BINDINGS:
            # Forget the longest unheard-of worker id that is not connected now.
            stale = next((w for w in self.bindings if w not in self._by_id), None)
            if stale is None:
                break
            del self.bindings[stale]
            self.state.unbind(stale)

    def _move_worker(self, old: bytes, new: bytes) -> None:
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

    def _apply_status(self, worker: WorkerEntry, status: p.ReplicaStatus, *, adopt: bool) -> None:
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
            self._send(worker.identity, p.Terminate(status.replica_id))
            return
        replica = model.replicas.get(status.replica_id)
        adopted = replica is None
        if replica is None:
            if not adopt or status.state == p.ModelState.FAILED or model.earlier(status.replica_id):
                self._send(worker.identity, p.Terminate(status.replica_id))
                return
            # A replica that kept running while its worker, or this broker, was away.
            replica = Replica(status.replica_id, model.uid, worker.identity, status.state)
            model.replicas[replica.replica_id] = replica
            log.info("took back replica %s on %s", replica.replica_id, worker.worker_id)
        if replica.worker != worker.identity:
            # Another worker runs the replica of that id now (this one was cut off, and
            # the model relaunched meanwhile): this worker's copy is nobody's.
            self._send(worker.identity, p.Terminate(status.replica_id))
            return
        ran = status.state == p.ModelState.READY and not model.ran
        if ran or (status.abilities and status.abilities != model.abilities):
            model.ran = model.ran or ran
            model.abilities = list(status.abilities or model.abilities)
            self._save(model)
        replica.progress = status.progress
        replica.cached_tokens = status.cached_tokens
        more_slots = status.slots > replica.slots
        replica.slots = max(status.slots, 1)
        if replica.state == status.state:
            if adopted:
                self._trim(model)
            if more_slots or adopted:
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
        # A launch or scale-up waiting on this replica answers for its failure; any other
        # failed replica is healed.
        waited_on = any(replica.replica_id in w.replica_ids for w in model.waiters)
        self._check_waiters(model)
        if (
            status.state == p.ModelState.FAILED
            and not waited_on
            and model.uid in self.cluster.models
        ):
            self._replica_failed(model, replica)
        if model.uid in self.cluster.models:
            self._trim(model)
            self.dispatch(model)

    def _finish(self, worker: WorkerEntry, message: p.Final | p.Error, frames: list[bytes]) -> None:
        flight = self.cluster.in_flight.get(message.request_id)
        if flight is None or flight.worker != worker.identity:
            return  # a cancelled, terminated or retried-elsewhere request's last frame
        del self.cluster.in_flight[message.request_id]
        model = self.cluster.models.get(flight.submit.model_uid)
        replica = model.replicas.get(flight.replica_id) if model else None
        if replica is not None:
            replica.in_flight = max(replica.in_flight - 1, 0)
        if (
            isinstance(message, p.Error)
            and message.code in (p.ErrorCode.MODEL_FAILED, p.ErrorCode.WORKER_LOST)
            and self._retry(flight, model)
        ):
            assert model is not None
            log.info("retrying %s elsewhere: %s", message.request_id, message.message)
            self.dispatch(model)
            return
        self._deliver(flight.client, frames)
        if model is None:
            return
        if isinstance(message, p.Final):
            worker.served += 1
            model.served += 1
            model.tokens += message.usage.completion_tokens
            self.cluster.affinity.remember(flight.submit.conversation, flight.replica_id)
        self.dispatch(model)

    def stats(self) -> p.BrokerStats:
        """The counters, each a broker attribute of its field's name."""
        fields = p.BrokerStats.__struct_fields__
        return p.BrokerStats(**{name: getattr(self, name) for name in fields})

    def send_heartbeats(self) -> None:
        heartbeat = p.encode(p.Heartbeat())
        for identity in list(self.cluster.workers):
            self._deliver(identity, heartbeat)
        self._bury()

    def purge_workers(self, now: float) -> None:
        """Remove workers that missed ``HEARTBEAT_LIVENESS`` intervals."""
        deadline = self.interval * HEARTBEAT_LIVENESS
        for identity, worker in list(self.cluster.workers.items()):
            if now - worker.last_seen > deadline:
                self._remove_worker(
                    identity, f"worker {worker.worker_id} missed heartbeats for {deadline:.1f} s"
                )

    def _remove_worker(self, identity: bytes, reason: str) -> None:
        worker = self.cluster.workers.pop(identity, None)
        if worker is None:
            return  # already gone: a send to it failed while it was being removed
        if self._by_id.get(worker.worker_id) == identity:
            del self._by_id[worker.worker_id]
        log.warning("dropping worker %s: %s", worker.worker_id, reason)
        self._forget_replicas(identity, set(), reason)

    def _forget_replicas(self, identity: bytes, keep: set[str], reason: str = "") -> None:
        """Drop the replicas on worker ``identity`` not in ``keep``, and end their requests."""
        lost = {
            rid
            for model in self.cluster.models.values()
            for rid, replica in model.replicas.items()
            if replica.worker == identity and rid not in keep
        }
        reason = reason or "it no longer hosts the replica"
        now = time.monotonic()
        for model in self.cluster.models.values():
            if any(rid in model.replicas for rid in lost):
                model.retry_at = max(model.retry_at, now)  # placed again at the next reconcile
        self._remove_replicas(lost, f"the worker was lost: {reason}", terminate=False)

    # ---- routing ----------------------------------------------------------------------

    def dispatch(self, model: Model) -> None:
        """Send queued requests of ``model`` to replicas with free slots."""
        now = time.monotonic()
        # Nothing ready and nothing coming: what waits ends. A broker that has just
        # restarted waits for its workers to announce their replicas first.
        if not model.ready() and not model.coming(now) and now >= self.settle_until:
            for entry in self.cluster.scheduler.drain(model.uid):
                self._error(
                    entry.client,
                    entry.submit.request_id,
                    p.ErrorCode.NO_REPLICA,
                    f"model {model.uid!r} has no ready replica",
                )
            return
        while (assignment := self.cluster.scheduler.next(model)) is not None:
            (client, submit, retried, _), replica = assignment
            replica.in_flight += 1
            self.cluster.in_flight[submit.request_id] = InFlight(
                client, submit, replica.replica_id, replica.worker, retried=retried
            )
            request = p.Request(submit.request_id, replica.replica_id, submit.kind, submit.params)
            if not self._deliver(replica.worker, p.encode(request)):
                # The worker is gone or too far behind to take more: this request must
                # not hold the slot. It goes elsewhere once, as any that failed before
                # its first token.
                flight = self.cluster.in_flight.pop(submit.request_id)
                self._release_slot(flight)
                if not self._retry(flight, model):
                    self._error(
                        client,
                        submit.request_id,
                        p.ErrorCode.WORKER_LOST,
                        "the worker serving this model did not take the request; retry",
                    )

    # ---- facades ----------------------------------------------------------------------

    def process_client(self, client: bytes, message: p.Message) -> None:
        handler = self._from_facades.get(type(message))
        if handler is not None:
            handler(client, message)
            return
        self.malformed += 1
        self._warn.warning(
            client.hex(),
            "unexpected",
            "unexpected %s from %r dropped",
            type(message).__name__,
            client[:32],
        )

    def _list_models(self, client: bytes, message: p.ListModels) -> None:
        page = page_of(list(self.cluster.models.values()), message.offset, message.limit)
        infos = [model_info(self.cluster, m, message.request_id) for m in page]
        self._send(client, p.ModelList(message.request_id, infos, len(self.cluster.models)))

    def _describe_model(self, client: bytes, message: p.DescribeModel) -> None:
        model = self.cluster.models.get(message.model_uid)
        if model is None:
            self._unknown_model(client, message.request_id, message.model_uid)
        else:
            self._send(client, model_info(self.cluster, model, message.request_id))

    def _cluster_info(self, client: bytes, message: p.ClusterInfo) -> None:
        self._send(
            client, cluster_page(self.cluster, message.request_id, message.offset, message.limit)
        )

    def _ping(self, client: bytes, message: p.Ping) -> None:
        self._send(client, p.Pong(message.request_id, self.instance, self.stats()))

    def _unknown_worker(self, client: bytes, message: p.Message) -> None:
        # A worker the broker does not know (either restarted, or it reconnected and this
        # is its new connection): ask it to announce itself.
        self._send(client, p.Disconnect("unknown worker; send READY"))

    def _families_call(
        self, client: bytes, message: p.RegisterFamily | p.UnregisterFamily | p.ListFamilies
    ) -> None:
        self._send(client, self.families.answer(message))

    def _submit(self, client: bytes, submit: p.Submit) -> None:
        model = self.cluster.models.get(submit.model_uid)
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
            busy = self.cluster.scheduler.waiting(model.uid) + sum(
                r.in_flight for r in model.replicas.values()
            )
            if busy >= model.request_limits:
                self._error(
                    client,
                    submit.request_id,
                    p.ErrorCode.QUEUE_FULL,
                    f"model {model.uid!r} is at its request_limits of {model.request_limits}; "
                    "retry later",
                )
                return
        refusal = self.cluster.scheduler.admit(model, Queued(client, submit))
        if refusal is not None:
            self._error(client, submit.request_id, p.ErrorCode.QUEUE_FULL, refusal)
            return
        self.dispatch(model)  # which also refuses it when no replica is ready or loading

    def _cancel(self, client: bytes, message: p.Cancel) -> None:
        request_id = message.request_id
        flight = self.cluster.in_flight.get(request_id)
        if flight is not None:
            self._send(flight.worker, message)
            return
        entry = self.cluster.scheduler.cancel(request_id)
        if entry is not None:
            self._error(entry.client, request_id, p.ErrorCode.CANCELLED, "cancelled")
