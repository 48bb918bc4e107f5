"""The broker without its socket: the cluster state, one handler table per kind of peer,
and the outbox of what the handlers send.

``process`` takes one multipart message (identity first) and hands it to its handler;
``flush`` delivers what the handlers sent through a function the caller gives (the socket
loop's, or a test's). Nothing a peer sends can raise out of either: a frame that does not
decode is counted as malformed, an exception out of a handler is the broker's own bug,
counted apart and answered ``internal_error`` (``tests/broker/test_commands.py`` drives
every command through the tables this way, with no socket).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from xb.broker.affinity import Affinity
from xb.broker.cluster import Cluster
from xb.broker.fairshare import FairShare
from xb.broker.families import Families
from xb.broker.heal import Healing
from xb.broker.ledger import Ledger
from xb.broker.management import Management
from xb.broker.outbox import Delivery, Outbox
from xb.broker.positions import Positions
from xb.broker.requests import Requests
from xb.broker.routing import LeastLoaded, RoutingPolicy
from xb.broker.scheduler import FirstComeFirstServed
from xb.broker.state import DesiredState
from xb.broker.table import WorkerEntry
from xb.broker.workers import Workers
from xb.core import protocol as p
from xb.core.registry import Registry
from xb.core.settings import HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS
from xb.core.throttle import Throttle

log = logging.getLogger("xb.broker")

DEFAULT_MAX_QUEUE = 256  # requests waiting per model

# What a worker sends once it is known; from an unknown peer, these ask it to announce itself.
WORKER_SENDS = (p.Heartbeat, p.ModelEvent, p.Partial, p.Final, p.Error)
# Messages no peer sends to the broker: its own replies and orders, and what passes only
# between a worker and its model processes. Every other message has a handler.
NOT_FOR_THE_BROKER = frozenset(
    {p.Request, p.Launch, p.Terminate, p.Pong, p.ModelInfo, p.ModelList, p.Cluster, p.Ack}
    | {p.Families, p.Share, p.Queued, p.UsageReport}
)

Deliver = Callable[[bytes, list[bytes]], Delivery]
# How each model's waiting requests take free slots: fair turns between tenants (the
# default), or one queue in arrival order (kept to measure the other against).
SCHEDULERS: dict[str, type[FairShare] | type[FirstComeFirstServed]] = {
    "fair": FairShare,
    "fifo": FirstComeFirstServed,
}


class Handlers:
    def __init__(
        self,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        max_queue: int = DEFAULT_MAX_QUEUE,
        policy: RoutingPolicy | None = None,
        state: Path | None = None,
        secure: bool = False,
        scheduler: str = "fair",
    ) -> None:
        """``state``: the file that keeps the desired state (``state.py``) across
        restarts; None keeps it in memory. ``secure``: peers come with CURVE keys.
        ``scheduler``: one of ``SCHEDULERS``, how waiting requests take free slots."""
        affinity = Affinity()
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler {scheduler!r}: use one of {', '.join(SCHEDULERS)}")
        serve = SCHEDULERS[scheduler](policy or LeastLoaded(), affinity, max_queue)
        self.cluster = cluster = Cluster(serve, affinity)
        self.outbox = outbox = Outbox()
        self.state = DesiredState(state)
        self.instance = uuid.uuid4().hex
        self.families = Families(Registry(state.parent if state is not None else None))
        self.ledger = Ledger(self.state.db)
        self.requests = Requests(cluster, outbox, self.ledger)
        self.positions = Positions(cluster, outbox)
        self.interval = heartbeat_interval
        self.management = Management(cluster, outbox, self.state, self.requests)
        self.healing = Healing(cluster, self.state, self.management, self.requests)
        self.workers = Workers(
            cluster,
            outbox,
            self.state,
            self.management,
            self.healing,
            self.requests,
            secure=secure,
            interval=heartbeat_interval,
        )
        self.healing.restore()
        if cluster.models:
            # Restored models wait for their workers to announce what still runs before
            # the missing replicas are placed again.
            cluster.settle_until = time.monotonic() + heartbeat_interval * HEARTBEAT_LIVENESS
        self._warn = Throttle(log)
        # What each kind of peer may send, and who handles it (READY is read before either
        # table, since it is what makes a peer a worker).
        self.from_workers: dict[type, Callable[[WorkerEntry, Any, list[bytes]], None]] = {
            p.Partial: self.requests.partial,
            p.Final: self.requests.finish,
            p.Error: self.requests.finish,
            p.Heartbeat: self.workers.heartbeat,
            p.ModelEvent: self.workers.model_event,
            p.Disconnect: self.workers.disconnect,
        }
        self.from_facades: dict[type, Callable[[bytes, Any], None]] = {
            p.Submit: self._submit,
            p.Cancel: self.requests.cancel,
            p.LaunchModel: self.management.launch,
            p.TerminateModel: self.management.terminate,
            p.ScaleModel: self.management.scale,
            p.ListModels: self.management.list_models,
            p.DescribeModel: self.management.describe_model,
            p.ClusterInfo: self.management.cluster_info,
            p.RegisterFamily: self._families_call,
            p.UnregisterFamily: self._families_call,
            p.ListFamilies: self._families_call,
            p.Ping: self._ping,
            p.UsageCall: self._usage,
            **dict.fromkeys(WORKER_SENDS, self.workers.unknown),
        }

    def handled(self) -> set[type]:
        """The message types some handler table takes (READY apart)."""
        return {p.Ready, *self.from_workers, *self.from_facades}

    def stats(self) -> p.BrokerStats:
        """The counters as they stand."""
        return msgspec.structs.replace(self.cluster.stats)

    def close(self) -> None:
        try:
            self.ledger.flush()
        finally:
            self.state.close()

    # ---- in -------------------------------------------------------------------------

    def process(self, frames: list[bytes], key: str = "") -> None:
        """Handle one multipart message from the peer whose public key is ``key``."""
        identity, body = frames[0], frames[1:]
        try:
            message = p.decode(body)
        except p.ProtocolError as exc:
            self.cluster.stats.malformed += 1
            self._warn.warning(identity.hex(), "malformed", "dropped malformed frame: %s", exc)
            return
        try:
            if isinstance(message, p.Ready):
                self.workers.register(identity, message, key)
            elif (worker := self.cluster.workers.get(identity)) is not None:
                worker.last_seen = time.monotonic()
                from_worker = self.from_workers.get(type(message))
                if from_worker is None:
                    self._unexpected(worker.worker_id, message)
                else:
                    from_worker(worker, message, body)
            else:
                from_facade = self.from_facades.get(type(message))
                if from_facade is None:
                    self._unexpected(identity.hex(), message)
                else:
                    from_facade(identity, message)
        except Exception as exc:
            # A frame that decoded is the peer's right; what fails on it is the broker's
            # bug, counted apart from malformed frames and logged with its traceback.
            self._handler_error(identity.hex(), f"handling {type(message).__name__}")
            request_id = getattr(message, "request_id", None)
            if identity not in self.cluster.workers and request_id:
                # Nobody may wait for an answer that will never come.
                self.outbox.error(
                    identity, request_id, p.ErrorCode.INTERNAL, f"broker error: {exc}"
                )

    def _unexpected(self, peer: str, message: p.Message) -> None:
        self.cluster.stats.malformed += 1
        self._warn.warning(
            peer, "unexpected", "unexpected %s from %s dropped", type(message).__name__, peer
        )

    def _handler_error(self, peer: str, doing: str) -> None:
        self.cluster.stats.handler_errors += 1
        self._warn.exception(peer, "error", "error %s from %s; dropped", doing, peer)

    def _submit(self, client: bytes, message: p.Submit) -> None:
        self.requests.submit(client, message)
        self.positions.admitted(client, message, time.monotonic())

    def _families_call(
        self, client: bytes, message: p.RegisterFamily | p.UnregisterFamily | p.ListFamilies
    ) -> None:
        self.outbox.send(client, self.families.answer(message))

    def _usage(self, client: bytes, message: p.UsageCall) -> None:
        self.outbox.send(client, self.ledger.report(message, self.cluster))

    def _ping(self, client: bytes, message: p.Ping) -> None:
        self.outbox.send(client, p.Pong(message.request_id, self.instance, self.cluster.stats))

    # ---- out ------------------------------------------------------------------------

    def flush(self, deliver: Deliver) -> None:
        """Deliver what the handlers sent, in order, with what failed deliveries cause:
        a request a worker did not take goes elsewhere, a peer gone is removed."""
        outbox, pending, sent = self.outbox, self.outbox.pending, Delivery.SENT
        while True:
            while pending:
                identity, frames, on_fail = pending.popleft()
                delivery = deliver(identity, frames)
                if delivery is sent:
                    continue
                self.cluster.stats.dropped += 1
                if delivery is Delivery.GONE:
                    outbox.gone.add(identity)
                else:
                    self._warn.warning(
                        identity.hex(), "full", "dropped a frame for a peer that lags"
                    )
                if on_fail is not None:
                    try:
                        on_fail()
                    except Exception:  # the loop must outlive any one bad state
                        self._handler_error(identity.hex(), "after a failed delivery")
            if not outbox.gone:
                return
            identity = outbox.gone.pop()
            try:
                self._peer_gone(identity)
            except Exception:
                self._handler_error(identity.hex(), "removing a peer that went away")

    def _peer_gone(self, identity: bytes) -> None:
        """A peer's connection is closed: a worker's requests fail over, a facade's stop."""
        if identity in self.cluster.workers:
            self.workers.remove(identity, "its connection closed")
        else:
            self.requests.client_gone(identity)

    # ---- every heartbeat interval ---------------------------------------------------

    def tick(self, now: float, deliver: Deliver) -> None:
        """Heartbeats out, silent workers out, missing replicas placed again, waiting
        requests told where they stand, quotas and usage written to the state file."""
        self.workers.send_heartbeats()
        self.flush(deliver)  # a worker found gone now is not given new replicas below
        try:
            self.workers.purge(now)
            self.healing.reconcile(now)
            self.positions.tick(now, self.interval)
        except Exception:  # the loop must outlive any one bad state
            log.exception("error in the broker's periodic work")
        try:
            self.ledger.flush()
        except Exception:  # a full disk, say: this tick's counts are lost, the loop goes on
            log.exception("could not write quotas and usage to the state file")
        self.flush(deliver)
