"""Weighted fair turns between tenants: a ``Scheduler`` that serves each model's waiting
requests by start-time fair queueing across tenants, interactive ones before any batch.

Each request gets a virtual start tag when it arrives: the later of its lane's virtual
time (the start tag of the request served last) and the finish tag of its tenant's
previous request; its finish tag adds its cost (``max_tokens``, or ``DEFAULT_COST`` when
it sets none) divided by its tenant's weight. A free slot takes the waiting request with
the smallest start tag. So a tenant with one request waiting is served at the next free
slot, ahead of another tenant's backlog, and tenants that all keep requests waiting get
slots in proportion to their weights (an idle tenant banks no credit: its next start is
no earlier than the lane's virtual time). Within a tenant, requests go in arrival order,
each to the replica the routing policy picks (where its conversation's prefix is cached,
if that replica has a free slot).

Bounds: at most ``max_queue`` requests wait per tenant and model (one tenant alone sees
the bound it always had; a flooding tenant is refused for itself, not for everybody), and
at most ``MODEL_QUEUE_FACTOR`` times that per model, whoever sends them.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from xb.broker.affinity import Affinity
from xb.broker.routing import RoutingPolicy
from xb.broker.scheduler import Scheduler
from xb.broker.table import Model, Queued, Replica, forget_oldest
from xb.core import protocol as p

PRIORITIES: tuple[p.Priority, ...] = ("interactive", "batch")  # served in this order
DEFAULT_COST = 256  # tokens a request without max_tokens is charged
MAX_COST = 32_768
MODEL_QUEUE_FACTOR = 4
MAX_REMEMBERED = 4096  # idle tenants whose finish tags a lane keeps


@dataclass
class _Waiting:
    start: float  # virtual start tag
    order: int  # arrival order, for ties and for draining oldest first
    entry: Queued


@dataclass
class _Lane:
    """The waiting requests of one model and priority, by tenant."""

    virtual: float = 0.0
    queues: dict[str, deque[_Waiting]] = field(default_factory=dict)
    finish: OrderedDict[str, float] = field(default_factory=OrderedDict)  # by tenant

    def add(self, item: _Waiting, tenant: str, cost: float) -> None:
        item.start = max(self.virtual, self.finish.get(tenant, 0.0))
        self.finish[tenant] = item.start + cost
        self.finish.move_to_end(tenant)
        forget_oldest(self.finish, MAX_REMEMBERED, self.queues.__contains__)
        self.queues.setdefault(tenant, deque()).append(item)

    def first(self) -> tuple[str, _Waiting] | None:
        """The tenant whose head request has the smallest start tag, and that request."""
        best: tuple[str, _Waiting] | None = None
        for tenant, queue in self.queues.items():
            head = queue[0]
            if best is None or (head.start, head.order) < (best[1].start, best[1].order):
                best = (tenant, head)
        return best

    def take(self, tenant: str) -> _Waiting:
        queue = self.queues[tenant]
        item = queue.popleft()
        if not queue:
            del self.queues[tenant]
        self.virtual = max(self.virtual, item.start)
        return item

    def items(self) -> list[_Waiting]:
        return [item for queue in self.queues.values() for item in queue]

    def remove(self, keep: Callable[[_Waiting], bool]) -> list[_Waiting]:
        """Take out the requests for which ``keep(item)`` is false; those taken."""
        gone: list[_Waiting] = []
        for tenant in list(self.queues):
            kept: deque[_Waiting] = deque()
            for item in self.queues[tenant]:
                (kept if keep(item) else gone).append(item)
            if kept:
                self.queues[tenant] = kept
            else:
                del self.queues[tenant]
        return gone


def cost(submit: p.Submit) -> float:
    """A request's virtual cost: the tokens it may generate over its tenant's weight."""
    tokens = submit.params.max_tokens or DEFAULT_COST
    return min(max(tokens, 1), MAX_COST) / max(submit.weight, 1e-3)


class FairShare(Scheduler):
    def __init__(self, policy: RoutingPolicy, affinity: Affinity, max_queue: int) -> None:
        self.policy = policy
        self.affinity = affinity
        self.max_queue = max_queue  # per tenant and model
        self._lanes: dict[tuple[str, p.Priority], _Lane] = {}
        self._counts: dict[str, int] = {}  # waiting per model
        self._tenant_counts: dict[tuple[str, str], int] = {}  # waiting per model and tenant
        self._order = itertools.count()

    def _lane(self, uid: str, priority: p.Priority) -> _Lane:
        return self._lanes.setdefault((uid, priority), _Lane())

    def _counted(self, uid: str, tenant: str, change: int) -> None:
        self._counts[uid] = self._counts.get(uid, 0) + change
        key = (uid, tenant)
        left = self._tenant_counts.get(key, 0) + change
        if left > 0:
            self._tenant_counts[key] = left
        else:
            self._tenant_counts.pop(key, None)

    def admit(self, model: Model, entry: Queued) -> str | None:
        submit = entry.submit
        tenant = submit.tenant
        mine = self._tenant_counts.get((model.uid, tenant), 0)
        if mine >= self.max_queue:
            who = f"tenant {tenant!r}" if tenant else "this caller"
            return (
                f"{who} has {mine} requests waiting for model {model.uid!r}, the most one "
                "tenant may queue; retry later"
            )
        total = self._counts.get(model.uid, 0)
        if total >= self.max_queue * MODEL_QUEUE_FACTOR:
            return f"model {model.uid!r} has {total} requests waiting; retry later"
        item = _Waiting(0.0, next(self._order), entry)
        self._lane(model.uid, submit.priority).add(item, tenant, cost(submit))
        self._counted(model.uid, tenant, 1)
        return None

    def requeue(self, model: Model, entry: Queued) -> None:
        # A retry goes first in its lane: it waited its turn once already. It may pass the
        # bounds by the few requests that were in flight, rather than be lost.
        lane = self._lane(model.uid, entry.submit.priority)
        item = _Waiting(lane.virtual, next(self._order), entry)
        lane.queues.setdefault(entry.submit.tenant, deque()).appendleft(item)
        self._counted(model.uid, entry.submit.tenant, 1)

    def next(self, model: Model) -> tuple[Queued, Replica] | None:
        for priority in PRIORITIES:
            lane = self._lanes.get((model.uid, priority))
            first = lane.first() if lane is not None else None
            if lane is None or first is None:
                continue
            tenant, head = first
            ready = model.ready()
            elsewhere = [r for r in ready if r.replica_id != head.entry.avoid] or ready
            preferred = self.affinity.lookup(head.entry.submit.prefix_keys)
            replica = self.policy.choose(elsewhere, preferred)
            if replica is None:
                return None  # every slot is busy: nothing lower may pass
            lane.take(tenant)
            self._counted(model.uid, tenant, -1)
            return head.entry, replica
        return None

    def waiting(self, uid: str) -> int:
        return self._counts.get(uid, 0)

    def cancel(self, request_id: str) -> Queued | None:
        for (uid, _), lane in self._lanes.items():
            gone = lane.remove(lambda item: item.entry.submit.request_id != request_id)
            if gone:
                self._counted(uid, gone[0].entry.submit.tenant, -1)
                return gone[0].entry
        return None

    def withdraw(self, client: bytes) -> None:
        for (uid, _), lane in self._lanes.items():
            for item in lane.remove(lambda item: item.entry.client != client):
                self._counted(uid, item.entry.submit.tenant, -1)

    def drain(self, uid: str) -> list[Queued]:
        items: list[_Waiting] = []
        for priority in PRIORITIES:
            lane = self._lanes.pop((uid, priority), None)
            if lane is not None:
                items += lane.items()
        self._counts.pop(uid, None)
        for key in [k for k in self._tenant_counts if k[0] == uid]:
            del self._tenant_counts[key]
        return [item.entry for item in sorted(items, key=lambda item: item.order)]
