"""Self-healing: the broker keeps each model at the replica count its user asked for.

Every heartbeat interval ``reconcile`` compares what runs with the
desired state (``state.py``) and places replicas that are missing: those lost with their
worker (at once where there is room, else when a worker with room joins), and those whose
process failed, after a backoff. A model whose replicas keep failing is given up after
``MAX_RESTARTS`` tries in a row: its last replica stays ``failed``, with the reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from xb.broker.cluster import Cluster
from xb.broker.management import Management, least_useful
from xb.broker.placement import PlacementError
from xb.broker.requests import Requests
from xb.broker.state import DesiredState
from xb.broker.table import Model, Replica
from xb.core.throttle import Throttle

log = logging.getLogger("xb.broker")

MAX_RESTARTS = 5  # failures in a row, then the replica stays failed
BACKOFF_FIRST = 1.0  # seconds before the first restart; doubled each time after
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # seconds without a failure that forgive the earlier ones
UNREPORTED_GRACE = 3.0  # seconds a placed replica may be missing from heartbeats


def backoff(failures: int) -> float:
    return float(min(BACKOFF_FIRST * 2 ** max(failures - 1, 0), BACKOFF_MAX))


@dataclass
class Healing:
    cluster: Cluster
    state: DesiredState
    management: Management
    requests: Requests
    _warn: Throttle = field(default_factory=lambda: Throttle(log))

    def restore(self) -> None:
        """Read the models users launched before this broker started; their replicas come
        back as workers announce them, or are placed once ``Cluster.settle_until`` passed."""
        for model in self.state.models():
            self.cluster.models[model.uid] = model
        if self.cluster.models:
            log.info("restored %d models from %s", len(self.cluster.models), self.state.path)

    # ---- reconciling ------------------------------------------------------------------

    def reconcile(self, now: float) -> None:
        """Place the replicas each model misses, as far as there is room."""
        if now < self.cluster.settle_until:
            return
        self.forget_unreported()
        for model in list(self.cluster.models.values()):
            if self.cluster.models.get(model.uid) is not model:
                continue  # dropped while an earlier model was being placed
            if model.failures and now - model.last_failure > STABLE_AFTER and model.ready():
                model.failures = 0
            missing = model.wanted - len(model.replicas)
            if missing <= 0 or now < model.retry_at or model.waiters:
                continue
            placed = 0
            for _ in range(missing):
                try:
                    self.management.add_replicas(model, 1)
                except PlacementError as exc:
                    self._warn.warning(
                        model.uid,
                        "room",
                        "%s waits for room for %d replicas: %s",
                        model.uid,
                        missing - placed,
                        exc,
                    )
                    break
                placed += 1
            if placed:
                restarted = min(placed, model.restarting)
                model.restarting -= restarted
                self.cluster.stats.restarts += restarted
                self.cluster.stats.replacements += placed - restarted
                self.state.save(model)  # its next replica id
            elif self.cluster.scheduler.waiting(model.uid):
                self.requests.dispatch(model)  # nothing comes: what waits ends with a clear error

    def forget_unreported(self) -> None:
        """Replicas a worker stopped reporting in its heartbeats (a launch it never
        received, a process it lost track of) are lost, and placed again."""
        hosted: dict[bytes, set[str]] = {}
        missing: dict[bytes, set[str]] = {}
        for model in self.cluster.models.values():
            for rid, replica in model.replicas.items():
                hosted.setdefault(replica.worker, set()).add(rid)
                worker = self.cluster.workers.get(replica.worker)
                if worker is None or worker.reported is None or rid in worker.reported:
                    continue
                if worker.reported_at - replica.since > UNREPORTED_GRACE:
                    missing.setdefault(replica.worker, set()).add(rid)
        for identity, rids in missing.items():
            self.management.forget_replicas(
                identity, hosted[identity] - rids, "it no longer reports it"
            )

    def replica_failed(self, model: Model, replica: Replica) -> None:
        """A replica nobody waits on failed: loading elsewhere after a loss, or its process
        died while serving. Start another after a backoff, or give up. A model that never
        had a ready replica (a launch that did not wait, and failed) keeps its failure for
        the user to see: loading again would fail the same way."""
        if not model.ran:
            return
        now = time.monotonic()
        model.failures += 1
        model.last_failure = now
        if model.failures > MAX_RESTARTS:
            model.retry_at = 0.0  # nothing comes: waiting requests end
            replica.error = (
                f"gave up after {MAX_RESTARTS} restarts in a row; last failure: {replica.error}"
            )
            log.warning("replica %s: %s", replica.replica_id, replica.error)
            return
        delay = backoff(model.failures)
        model.retry_at = now + delay
        model.restarting += 1
        log.warning(
            "replica %s failed (%s); a new one starts in %.0f s (try %d of %d)",
            replica.replica_id,
            replica.error,
            delay,
            model.failures,
            MAX_RESTARTS,
        )
        self.management.remove_replicas(
            {replica.replica_id}, replica.error or "it failed", terminate=True
        )

    def trim(self, model: Model) -> None:
        """More replicas than wanted (a lost worker came back after its replicas were placed
        again): stop the least useful."""
        extra = len(model.replicas) - model.wanted
        if extra <= 0 or model.waiters:
            return
        doomed = least_useful(model, extra)
        log.info(
            "model %s has %d replicas more than wanted; stopping %s",
            model.uid,
            extra,
            ", ".join(sorted(doomed)),
        )
        self.management.remove_replicas(
            doomed, f"model {model.uid!r} has enough replicas", terminate=True
        )
