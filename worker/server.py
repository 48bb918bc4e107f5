"""The worker: one DEALER to the broker, one ROUTER to its model processes, one poll loop.

Model loading happens in the model processes, so nothing here blocks heartbeats.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import msgspec
import psutil
import zmq

from xb.core import engines
from xb.core import protocol as p
from xb.core.engines import EngineError
from xb.core.keys import PeerKeys
from xb.core.lifetime import child_env
from xb.core.modelfile import GPU_RUNTIME
from xb.core.settings import HEARTBEAT_INTERVAL
from xb.core.units import size_text
from xb.worker.cores import default_budget, threads_per_replica, usable_cores
from xb.worker.memory import memory_snapshot
from xb.worker.uplink import Uplink

log = logging.getLogger("xb.worker")

_KILL_GRACE = 5.0


@dataclass
class Replica:
    spec: p.ModelSpec
    replica_id: str
    process: subprocess.Popen[bytes]
    state: p.ModelState = p.ModelState.LOADING
    error: str | None = None
    abilities: list[str] = field(default_factory=list)
    progress: p.Progress | None = None
    in_flight: set[str] = field(default_factory=set)
    slots: int = 1  # sequences the model process decodes together, known once it is ready
    cached_tokens: int = 0
    threads: int = 1  # CPU threads it was told it may use (SHARE)

    def status(self, *, with_spec: bool = False) -> p.ReplicaStatus:
        return p.ReplicaStatus(
            replica_id=self.replica_id,
            model_uid=self.spec.model_uid,
            model_name=self.spec.model_name,
            state=self.state,
            error=self.error,
            in_flight=min(len(self.in_flight), self.slots),
            queue_depth=max(len(self.in_flight) - self.slots, 0),
            abilities=self.abilities,
            progress=self.progress,
            spec=self.spec if with_spec else None,
            slots=self.slots,
            cached_tokens=self.cached_tokens,
        )


class Worker:
    def __init__(
        self,
        broker: str,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        worker_id: str | None = None,
        memory_limit: int | None = None,
        threads: int | None = None,
        keys: PeerKeys | None = None,
    ) -> None:
        """``keys``: this worker's CURVE keys and the broker's public key; None for a
        broker that takes plain peers."""
        self.broker = broker
        self.memory_limit = memory_limit
        # CPU threads this worker's llama.cpp models share (cores.py says why the default).
        self.threads = min(threads or default_budget(usable_cores()), p.MAX_THREADS)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.interval = heartbeat_interval
        self.replicas: dict[str, Replica] = {}
        self._dying: list[tuple[subprocess.Popen[bytes], float]] = []
        self._ctx = zmq.Context()
        self._models = self._ctx.socket(zmq.ROUTER)
        self._models.setsockopt(zmq.LINGER, 0)
        # Model processes reach the worker through a socket file in a folder only this
        # user can enter: no other local user can pose as a model process.
        self._private = tempfile.mkdtemp(prefix="xb-worker-")
        self._models_address = f"ipc://{self._private}/models"
        self._models.bind(self._models_address)
        self._poller = zmq.Poller()
        self._poller.register(self._models, zmq.POLLIN)
        self._uplink = Uplink(self._ctx, self._poller, broker, keys, self._ready, self.interval)
        self._running = True

    # ---- sockets ----------------------------------------------------------------------

    def _ready(self) -> p.Ready:
        return p.Ready(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            memory=self.memory(),
            slots=self.slots(),
            replicas=[r.status(with_spec=True) for r in self.replicas.values()],
        )

    def _send_broker(self, message: p.Message) -> None:
        self._uplink.send(message)

    def _send_model(self, replica_id: str, message: p.Message) -> None:
        self._models.send_multipart([replica_id.encode(), *p.encode(message)])

    # ---- the loop ---------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._uplink.connect()
        next_heartbeat = time.monotonic() + self.interval
        try:
            while self._running:
                timeout = max(0.0, next_heartbeat - time.monotonic())
                events = dict(self._poller.poll(int(timeout * 1000)))
                if events.get(self._models):
                    self._receive_models()
                for frames in self._uplink.receive(events):
                    self._handle_broker(frames)
                self._reap()
                now = time.monotonic()
                if now >= next_heartbeat:
                    next_heartbeat = now + self.interval
                    if self._uplink.tick(now):
                        self._send_heartbeat()
        finally:
            self.shutdown()

    def slots(self) -> int:
        """Sequences the ready replicas here can decode at once, all together."""
        return sum(r.slots for r in self.replicas.values() if r.state == p.ModelState.READY)

    def _send_heartbeat(self) -> None:
        statuses = [r.status() for r in self.replicas.values()]
        self._send_broker(
            p.Heartbeat(
                memory=self.memory(),
                replicas=statuses,
                queue_depth=sum(s.queue_depth for s in statuses),
                in_flight=sum(s.in_flight for s in statuses),
            )
        )

    def _handle_broker(self, frames: list[bytes]) -> None:
        message = p.decode_or_drop(frames, log, "broker")
        if message is None:
            return
        try:
            self.process_broker(message)
        except Exception:  # one bad launch must not take down every model here
            log.exception("error handling %s from the broker", type(message).__name__)

    def _receive_models(self) -> None:
        while True:
            try:
                identity, *frames = self._models.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            message = p.decode_or_drop(frames, log, "a model process")
            if message is None:
                continue
            try:
                self.process_model(identity.decode(errors="replace"), message)
            except Exception:
                log.exception("error handling %s from a model process", type(message).__name__)

    # ---- protocol verbs ---------------------------------------------------------------

    def process_broker(self, message: p.Message) -> None:
        if isinstance(message, p.Request):
            replica = self.replicas.get(message.replica_id)
            if replica is None or replica.state != p.ModelState.READY:
                self._send_broker(
                    p.Error(
                        message.request_id,
                        p.ErrorCode.NO_REPLICA,
                        f"replica {message.replica_id!r} is not ready on worker {self.worker_id}",
                    )
                )
                return
            replica.in_flight.add(message.request_id)
            self._reshare()
            self._send_model(replica.replica_id, message)
        elif isinstance(message, p.Cancel):
            for replica in self.replicas.values():
                if message.request_id in replica.in_flight:
                    self._send_model(replica.replica_id, message)
        elif isinstance(message, p.Launch):
            self.launch(message)
        elif isinstance(message, p.Terminate):
            self.terminate(message.replica_id)
        elif isinstance(message, p.Disconnect):
            log.info("broker asked us to re-announce: %s", message.reason)
            self._uplink.announce()
        elif not isinstance(message, p.Heartbeat):
            log.warning("unexpected %s from broker dropped", type(message).__name__)

    def process_model(self, replica_id: str, message: p.Message) -> None:
        replica = self.replicas.get(replica_id)
        if replica is None:
            return  # a terminated replica's last words
        if isinstance(message, p.Final | p.Error):
            replica.in_flight.discard(message.request_id)
            self._send_broker(message)
            if not replica.in_flight:
                self._reshare()
        elif isinstance(message, p.Partial):
            self._send_broker(message)
        elif isinstance(message, p.ModelEvent):
            status = message.status
            replica.cached_tokens = status.cached_tokens
            if status.progress is None and (status.state, status.error, status.slots) == (
                replica.state,
                replica.error,
                replica.slots,
            ):
                return  # only its cache changed: the next heartbeat says so
            replica.state, replica.error = status.state, status.error
            replica.abilities = list(status.abilities)
            replica.progress = status.progress
            replica.slots = max(status.slots, 1)
            log.info("replica %s is %s %s", replica_id, replica.state, replica.error or "")
            self._reshare()
            self._send_broker(p.ModelEvent(replica.status()))

    def memory(self) -> p.Memory:
        """What this worker offers: with a memory limit, less what its models take now."""
        used = 0
        if self.memory_limit is not None:
            for replica in self.replicas.values():
                with contextlib.suppress(psutil.Error):
                    used += psutil.Process(replica.process.pid).memory_info().rss
        return memory_snapshot(self.memory_limit, used)

    def launch(self, message: p.Launch) -> None:
        if message.replica_id in self.replicas:
            log.warning("replica %s already hosted; launch ignored", message.replica_id)
            return
        memory = self.memory()
        gpu = message.spec.n_gpu_layers != 0 and memory.gpu_total > 0
        free = memory.gpu_free if gpu else memory.free
        need = message.need + GPU_RUNTIME if gpu else message.need  # CUDA's own, on a GPU
        if need > free:
            # The broker's view was a heartbeat old; this worker checks again.
            reason = (
                f"model {message.spec.model_uid!r} needs {size_text(need)} and "
                f"worker {self.worker_id} has {size_text(free)} of "
                f"{'GPU memory' if gpu else 'memory'} free"
            )
            self._refuse(message, reason)
            return
        # What the model process may take: its own check is against this, or against the
        # machine's free RAM when the worker sets no bound.
        offer = free if self.memory_limit is not None or gpu else 0
        threads = threads_per_replica(self.threads, self._working())
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "xb.worker.model_process",
                    self._models_address,
                    message.replica_id,
                    msgspec.json.encode(message.spec).decode(),
                    str(offer),
                    str(threads),
                ],
                env=child_env(),
            )
        except OSError as exc:
            self._refuse(message, f"cannot start a model process: {exc}")
            return
        replica = Replica(message.spec, message.replica_id, process, threads=threads)
        self.replicas[message.replica_id] = replica
        log.info(
            "loading %s (%s) in pid %d with %d threads",
            message.replica_id,
            message.spec.model_name,
            process.pid,
            threads,
        )
        self._send_broker(p.ModelEvent(replica.status()))

    def _sharing(self) -> list[Replica]:
        """The loaded replicas whose engine runs on this worker's CPU threads."""
        return [
            r
            for r in self.replicas.values()
            if r.state == p.ModelState.READY and shares_threads(r.spec)
        ]

    def _working(self) -> int:
        return sum(bool(r.in_flight) for r in self._sharing())

    def _reshare(self) -> None:
        """Share the threads among the replicas at work, not all that are loaded: one
        working alone has every core, two have half each. Idle ones are told the share
        they would have now, and told again when they start working."""
        threads = threads_per_replica(self.threads, self._working())
        for replica in self._sharing():
            if replica.threads != threads:
                replica.threads = threads
                self._send_model(replica.replica_id, p.Share(threads))

    def _refuse(self, message: p.Launch, reason: str) -> None:
        spec = message.spec
        status = p.ReplicaStatus(
            message.replica_id, spec.model_uid, spec.model_name, p.ModelState.FAILED, reason
        )
        self._send_broker(p.ModelEvent(status))

    def terminate(self, replica_id: str) -> None:
        replica = self.replicas.pop(replica_id, None)
        if replica is None:
            return
        # The broker asked for this and has ended the replica's requests itself.
        replica.process.send_signal(signal.SIGTERM)
        self._dying.append((replica.process, time.monotonic() + _KILL_GRACE))
        log.info("terminated %s", replica_id)
        self._reshare()

    def _reap(self) -> None:
        """Notice model processes that died, and finish off those asked to stop."""
        for replica in self.replicas.values():
            code = replica.process.poll()
            if code is None or replica.state == p.ModelState.FAILED:
                continue
            reason = f"model process exited with code {code}"
            replica.state, replica.error = p.ModelState.FAILED, replica.error or reason
            log.warning("replica %s failed: %s", replica.replica_id, replica.error)
            for request_id in replica.in_flight:
                self._send_broker(p.Error(request_id, p.ErrorCode.MODEL_FAILED, reason))
            replica.in_flight.clear()
            self._send_broker(p.ModelEvent(replica.status()))
            self._reshare()
        now = time.monotonic()
        still: list[tuple[subprocess.Popen[bytes], float]] = []
        for process, deadline in self._dying:
            if process.poll() is None:
                if now > deadline:
                    process.kill()
                still.append((process, deadline))
        self._dying = still

    def shutdown(self) -> None:
        processes = [r.process for r in self.replicas.values()] + [d[0] for d in self._dying]
        for process in processes:
            if process.poll() is None:
                process.kill()
        for process in processes:
            process.wait()
        with contextlib.suppress(zmq.ZMQError):
            self._send_broker(p.Disconnect("worker shutting down"))
            if self._uplink.sock is not None:
                self._uplink.sock.setsockopt(zmq.LINGER, 100)  # let the goodbye leave
        self._uplink.close()
        self._models.close(linger=0)
        shutil.rmtree(self._private, ignore_errors=True)
        self._ctx.term()


def shares_threads(spec: p.ModelSpec) -> bool:
    """Whether the engine of ``spec`` runs on the worker's CPU threads (shared among them)."""
    try:
        return engines.of_spec(spec).shares_threads
    except EngineError:
        return False  # its launch fails in its own process, saying why
