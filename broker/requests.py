"""The request path: a SUBMIT waits in the scheduler until a replica has a free slot, its
worker's PARTIAL frames go back to the facade as they are, and its FINAL or ERROR frees
the slot. A request whose replica failed before its first token goes elsewhere, once."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

from xb.broker.cluster import Cluster
from xb.broker.ledger import Ledger
from xb.broker.outbox import Outbox
from xb.broker.table import InFlight, Model, Queued, WorkerEntry
from xb.core import protocol as p

log = logging.getLogger("xb.broker")


@dataclass
class Requests:
    cluster: Cluster
    outbox: Outbox
    ledger: Ledger = field(default_factory=Ledger)  # quotas and usage per tenant

    def unknown_model(self, client: bytes, request_id: str, uid: str) -> None:
        known = ", ".join(sorted(self.cluster.models)) or "none"
        self.outbox.error(
            client,
            request_id,
            p.ErrorCode.UNKNOWN_MODEL,
            f"model {uid!r} is not running (running: {known}); launch it first",
        )

    # ---- from facades -----------------------------------------------------------------

    def submit(self, client: bytes, submit: p.Submit) -> None:
        model = self.cluster.models.get(submit.model_uid)
        if model is None:
            self.unknown_model(client, submit.request_id, submit.model_uid)
            return
        ability = p.ABILITY[submit.kind]
        if model.abilities and ability not in model.abilities:
            self.outbox.error(
                client,
                submit.request_id,
                p.ErrorCode.INVALID_REQUEST,
                f"model {model.uid!r} cannot {ability} (it can: {', '.join(model.abilities)})",
            )
            return
        refused = self.ledger.refusal(submit)
        if refused is not None:
            message, retry_after = refused
            self.outbox.send(
                client,
                p.Error(submit.request_id, p.ErrorCode.QUOTA_EXCEEDED, message, retry_after),
            )
            return
        if model.request_limits is not None:
            busy = self.cluster.scheduler.waiting(model.uid) + sum(
                r.in_flight for r in model.replicas.values()
            )
            if busy >= model.request_limits:
                self.outbox.error(
                    client,
                    submit.request_id,
                    p.ErrorCode.QUEUE_FULL,
                    f"model {model.uid!r} is at its request_limits of {model.request_limits}; "
                    "retry later",
                )
                return
        refusal = self.cluster.scheduler.admit(model, Queued(client, submit))
        if refusal is not None:
            self.outbox.error(client, submit.request_id, p.ErrorCode.QUEUE_FULL, refusal)
            return
        self.ledger.queued(submit)
        self.dispatch(model)  # which also refuses it when no replica is ready or loading

    def cancel(self, client: bytes, message: p.Cancel) -> None:
        request_id = message.request_id
        flight = self.cluster.in_flight.get(request_id)
        if flight is not None:
            self.outbox.send(flight.worker, message)
            return
        entry = self.cluster.scheduler.cancel(request_id)
        if entry is not None:
            self.outbox.error(entry.client, request_id, p.ErrorCode.CANCELLED, "cancelled")

    def client_gone(self, identity: bytes) -> None:
        """A facade's connection closed: its requests stop, running or waiting."""
        for request_id, flight in list(self.cluster.in_flight.items()):
            if flight.client == identity and self.cluster.in_flight.get(request_id) is flight:
                del self.cluster.in_flight[request_id]
                self.release_slot(flight)
                self.outbox.send(flight.worker, p.Cancel(request_id))
        self.cluster.scheduler.withdraw(identity)
        for model in self.cluster.models.values():
            model.waiters = [w for w in model.waiters if w.client != identity]

    # ---- from workers -----------------------------------------------------------------

    def partial(self, worker: WorkerEntry, message: p.Partial, frames: list[bytes]) -> None:
        flight = self.cluster.in_flight.get(message.request_id)
        if flight is not None and flight.worker == worker.identity:
            flight.started = True
            self.outbox.forward(flight.client, frames)

    def finish(self, worker: WorkerEntry, message: p.Final | p.Error, frames: list[bytes]) -> None:
        flight = self.cluster.in_flight.get(message.request_id)
        if flight is None or flight.worker != worker.identity:
            return  # a cancelled, terminated or retried-elsewhere request's last frame
        del self.cluster.in_flight[message.request_id]
        model = self.cluster.models.get(flight.submit.model_uid)
        self.release_slot(flight)
        if (
            isinstance(message, p.Error)
            and message.code in (p.ErrorCode.MODEL_FAILED, p.ErrorCode.WORKER_LOST)
            and self.retry(flight, model)
        ):
            assert model is not None
            log.info(
                "retrying %s of tenant %r elsewhere: %s",
                message.request_id,
                flight.submit.tenant,
                message.message,
            )
            self.dispatch(model)
            return
        self.outbox.forward(flight.client, frames)
        self.ledger.ended(flight.submit, message)
        if model is None:
            return
        if isinstance(message, p.Final):
            worker.served += 1
            model.served += 1
            model.tokens += message.usage.completion_tokens
            self.cluster.stats.preemptions += message.preemptions
        if isinstance(message, p.Final) or message.code == p.ErrorCode.CANCELLED:
            # A cancelled answer's cells stay cached too: its follow-up goes there as well.
            self.cluster.affinity.remember(flight.submit.conversation, flight.replica_id)
        self.dispatch(model)

    # ---- slots ------------------------------------------------------------------------

    def dispatch(self, model: Model) -> None:
        """Send waiting requests of ``model`` to replicas with free slots."""
        now = time.monotonic()
        # Nothing ready and nothing coming: what waits ends. A broker that has just
        # restarted waits for its workers to announce their replicas first.
        if not model.ready() and not model.coming(now) and now >= self.cluster.settle_until:
            for entry in self.cluster.scheduler.drain(model.uid):
                self.outbox.error(
                    entry.client,
                    entry.submit.request_id,
                    p.ErrorCode.NO_REPLICA,
                    f"model {model.uid!r} has no ready replica",
                )
            return
        while (assignment := self.cluster.scheduler.next(model)) is not None:
            (client, submit, retried, _), replica = assignment
            replica.in_flight += 1
            replica.batch += submit.priority == "batch"
            replica.tenants[submit.tenant] += 1
            self.ledger.dispatched(submit)
            flight = InFlight(client, submit, replica.replica_id, replica.worker, retried=retried)
            self.cluster.in_flight[submit.request_id] = flight
            request = p.Request(
                submit.request_id,
                replica.replica_id,
                submit.kind,
                submit.params,
                submit.priority,
                submit.tenant,
            )
            self.outbox.send(replica.worker, request, functools.partial(self._not_taken, flight))

    def _not_taken(self, flight: InFlight) -> None:
        """The worker is gone or too far behind to take the request: it must not hold
        the slot. It goes elsewhere once, as any that failed before its first token."""
        request_id = flight.submit.request_id
        if self.cluster.in_flight.get(request_id) is not flight:
            return  # it ended meanwhile (cancelled, or its model terminated)
        del self.cluster.in_flight[request_id]
        self.release_slot(flight)
        model = self.cluster.models.get(flight.submit.model_uid)
        if self.retry(flight, model):
            assert model is not None
            self.dispatch(model)
            return
        self.outbox.error(
            flight.client,
            request_id,
            p.ErrorCode.WORKER_LOST,
            "the worker serving this model did not take the request; retry",
        )

    def release_slot(self, flight: InFlight) -> None:
        model = self.cluster.models.get(flight.submit.model_uid)
        replica = model.replicas.get(flight.replica_id) if model else None
        if replica is not None:
            replica.in_flight = max(replica.in_flight - 1, 0)
            if flight.submit.priority == "batch":
                replica.batch = max(replica.batch - 1, 0)
            tenants, tenant = replica.tenants, flight.submit.tenant
            if tenants[tenant] > 1:
                tenants[tenant] -= 1
            else:
                tenants.pop(tenant, None)

    def retry(self, flight: InFlight, model: Model | None) -> bool:
        """Queue a request whose replica failed before it sent a token again, once, for
        another ready replica; False when it cannot be (the caller ends it)."""
        if flight.started or flight.retried or model is None:
            return False
        others = [r for r in model.ready() if r.replica_id != flight.replica_id]
        if not others:
            return False
        self.cluster.stats.retries += 1
        self.cluster.scheduler.requeue(
            model, Queued(flight.client, flight.submit, retried=True, avoid=flight.replica_id)
        )
        return True
