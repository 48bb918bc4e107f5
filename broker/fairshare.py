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

An interactive request that finds no free slot goes to a replica where a batch request
runs, beyond the replica's slots: its worker preempts a batch sequence for it
(``worker/llama_engine.py``), which resumes when a slot frees. The broker counts a
replica's batch requests; those beyond its slots wait there preempted, so one still runs
while ``batch > in_flight - slots``. Likewise a request of a tenant with nothing in flight
for the model goes beyond the slots of a replica where another tenant holds two or more
(up to twice its slots): its engine preempts one of that tenant's sequences of no higher
priority, so a tenant's first request waits for a step, not for another's answer to end.

Bounds: at most ``max_queue`` requests wait per tenant and model (one tenant alone sees
the bound it always had; a flooding tenant is refused for itself, not for everybody), and
at most ``MODEL_QUEUE_FACTOR`` times that per model, whoever sends them.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import operator
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from xb.broker.affinity import Affinity
from xb.broker.routing import RoutingPolicy
from xb.broker.scheduler import Scheduler
from xb.broker.table import Model, Queued, Replica, forget_oldest
from xb.core import protocol as p

DEFAULT_COST = 256  # tokens a request without max_tokens is charged
MAX_COST = 32_768
MODEL_QUEUE_FACTOR = 4
MAX_REMEMBERED = 4096  # idle tenants whose finish tags a lane keeps


@dataclass(slots=True)
class _Waiting:
    start: float  # virtual start tag
    order: int  # arrival order, for ties and for draining oldest first
    entry: Queued


class _Lane:
    """The waiting requests of one model and priority, by tenant."""

    __slots__ = ("finish", "queues", "size", "virtual")

    def __init__(self) -> None:
        self.virtual = 0.0
        self.size = 0
        self.queues: dict[str, deque[_Waiting]] = {}
        self.finish: OrderedDict[str, float] = OrderedDict()  # by tenant, idle ones too

    def add(self, item: _Waiting, tenant: str, cost: float) -> None:
        finish = self.finish
        item.start = max(self.virtual, finish.get(tenant, 0.0))
        finish[tenant] = item.start + cost
        if len(finish) > MAX_REMEMBERED:
            forget_oldest(finish, MAX_REMEMBERED, self.queues.__contains__)
        queue = self.queues.get(tenant)
        if queue is None:
            queue = self.queues[tenant] = deque()
        queue.append(item)
        self.size += 1

    def first(self) -> tuple[str, _Waiting]:
        """The tenant whose head request has the smallest start tag, and that request
        (the lane is not empty)."""
        queues = iter(self.queues.items())
        tenant, queue = next(queues)
        best = (tenant, queue[0])
        for tenant, queue in queues:
            head = queue[0]
            if (head.start, head.order) < (best[1].start, best[1].order):
                best = (tenant, head)
        return best

    def take(self, tenant: str) -> None:
        queue = self.queues[tenant]
        item = queue.popleft()
        if not queue:
            del self.queues[tenant]
        self.size -= 1
        if item.start > self.virtual:
            self.virtual = item.start

    def waiting(self, tenant: str) -> int:
        queue = self.queues.get(tenant)
        return len(queue) if queue else 0

    def items(self) -> list[_Waiting]:
        return [item for queue in self.queues.values() for item in queue]

    def in_turn(self) -> Iterator[_Waiting]:
        """The waiting requests in the order ``first`` and ``take`` hand them out: each
        time the tenant whose head has the smallest tag."""
        return heapq.merge(*self.queues.values(), key=_tag)

    def place(self, request_id: str) -> int | None:
        """Where ``request_id`` stands in ``in_turn``, 1 for the next; None when it is not
        in this lane. Without sorting: a request goes after every one ahead of it in its
        tenant's queue, so it comes out at the largest tag up to it (its queue's running
        maximum: a retried request at the head may carry a later tag than those behind
        it), and each other tenant's requests go before it while their running maximum is
        below that."""
        found = self._find(request_id)
        if found is None:
            return None
        tenant, index = found
        turn = max(map(_tag, itertools.islice(self.queues[tenant], index + 1)))
        others = (q for t, q in self.queues.items() if t != tenant)
        return index + 1 + sum(_before(q, turn) for q in others)

    def _find(self, request_id: str) -> tuple[str, int] | None:
        """The tenant whose queue holds ``request_id``, and its index there."""
        for tenant, queue in self.queues.items():
            # The request just admitted, the one asked about most, is its queue's last.
            if queue[-1].entry.submit.request_id == request_id:
                return tenant, len(queue) - 1
        for tenant, queue in self.queues.items():
            for index, item in enumerate(queue):
                if item.entry.submit.request_id == request_id:
                    return tenant, index
        return None

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
        self.size -= len(gone)
        return gone


def _tag(item: _Waiting) -> tuple[float, int]:
    return item.start, item.order


def _before(queue: deque[_Waiting], turn: tuple[float, int]) -> int:
    """How many requests at the front of ``queue`` have tags below ``turn``."""
    start, order = turn
    count = 0
    for item in queue:  # the tags unpacked: this loop is most of a position's cost
        if item.start > start or (item.start == start and item.order >= order):
            break
        count += 1
    return count


def preemptible(model: Model, ready: list[Replica], submit: p.Submit) -> Replica | None:
    """Where a request that finds no free slot may go beyond the slots, for its replica's
    engine to preempt a sequence for it (``worker/llama_engine.py``): an interactive one
    to the replica running the most batch requests (those beyond its slots are preempted
    already); a request of a tenant with nothing in flight for the model to the replica
    where one tenant holds the most slots, two at least, up to twice its slots. None
    when it must wait."""
    if submit.priority == "interactive":
        running = [(r.batch - max(r.in_flight - r.slots, 0), r) for r in ready]
        most = max(running, key=operator.itemgetter(0), default=(0, None))
        if most[0] > 0:
            return most[1]
    if any(r.tenants.get(submit.tenant) for r in model.replicas.values()):
        return None
    held = [(max(r.tenants.values(), default=0), r) for r in ready if r.in_flight < 2 * r.slots]
    most = max(held, key=operator.itemgetter(0), default=(0, None))
    return most[1] if most[0] >= 2 else None


def cost(submit: p.Submit) -> float:
    """A request's virtual cost: the tokens it may generate over its tenant's weight."""
    tokens = submit.params.max_tokens or DEFAULT_COST
    return min(max(tokens, 1), MAX_COST) / max(submit.weight, 1e-3)


class FairShare(Scheduler):
    def __init__(self, policy: RoutingPolicy, affinity: Affinity, max_queue: int) -> None:
        self.policy = policy
        self.affinity = affinity
        self.max_queue = max_queue  # per tenant and model
        self._lanes: dict[str, tuple[_Lane, _Lane]] = {}  # by model: (interactive, batch)
        self._order = itertools.count()

    def _lane(self, uid: str, priority: p.Priority) -> _Lane:
        lanes = self._lanes.get(uid)
        if lanes is None:
            lanes = self._lanes[uid] = (_Lane(), _Lane())
        return lanes[priority == "batch"]

    def admit(self, model: Model, entry: Queued) -> str | None:
        submit = entry.submit
        tenant = submit.tenant
        lanes = self._lanes.get(model.uid)
        if lanes is None:
            lanes = self._lanes[model.uid] = (_Lane(), _Lane())
        interactive, batch = lanes
        mine = interactive.waiting(tenant) + batch.waiting(tenant)
        if mine >= self.max_queue:
            who = f"tenant {tenant!r}" if tenant else "this caller"
            return (
                f"{who} has {mine} requests waiting for model {model.uid!r}, the most one "
                "tenant may queue; retry later"
            )
        total = interactive.size + batch.size
        if total >= self.max_queue * MODEL_QUEUE_FACTOR:
            return f"model {model.uid!r} has {total} requests waiting; retry later"
        item = _Waiting(0.0, next(self._order), entry)
        (batch if submit.priority == "batch" else interactive).add(item, tenant, cost(submit))
        return None

    def requeue(self, model: Model, entry: Queued) -> None:
        # A retry goes first in its lane: it waited its turn once already. It may pass the
        # bounds by the few requests that were in flight, rather than be lost.
        lane = self._lane(model.uid, entry.submit.priority)
        item = _Waiting(lane.virtual, next(self._order), entry)
        lane.queues.setdefault(entry.submit.tenant, deque()).appendleft(item)
        lane.size += 1

    def next(self, model: Model) -> tuple[Queued, Replica] | None:
        for lane in self._lanes.get(model.uid, ()):
            if not lane.size:
                continue
            tenant, head = lane.first()
            entry = head.entry
            ready = model.ready()
            if entry.avoid:
                ready = [r for r in ready if r.replica_id != entry.avoid] or ready
            replica = self.policy.choose(ready, self.affinity.lookup(entry.submit.prefix_keys))
            if replica is None:
                replica = preemptible(model, ready, entry.submit)
            if replica is None:
                return None  # every slot is busy: nothing lower may pass
            lane.take(tenant)
            return entry, replica
        return None

    def waiting(self, uid: str) -> int:
        return sum(lane.size for lane in self._lanes.get(uid, ()))

    def tenants(self, uid: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for lane in self._lanes.get(uid, ()):
            for tenant, queue in lane.queues.items():
                counts[tenant] = counts.get(tenant, 0) + len(queue)
        return counts

    def cancel(self, request_id: str) -> Queued | None:
        for lanes in self._lanes.values():
            for lane in lanes:
                found = next(
                    (
                        i
                        for q in lane.queues.values()
                        for i in q
                        if i.entry.submit.request_id == request_id
                    ),
                    None,
                )
                if found is not None:
                    lane.remove(functools.partial(operator.is_not, found))
                    return found.entry
        return None

    def withdraw(self, client: bytes) -> None:
        for lanes in self._lanes.values():
            for lane in lanes:
                lane.remove(lambda item: item.entry.client != client)

    def drain(self, uid: str) -> list[Queued]:
        items = [item for lane in self._lanes.pop(uid, ()) for item in lane.items()]
        return [item.entry for item in sorted(items, key=lambda item: item.order)]

    def order(self, uid: str) -> list[Queued]:
        # Interactive first: ``next`` serves no batch request while one waits.
        return [item.entry for lane in self._lanes.get(uid, ()) for item in lane.in_turn()]

    def position(self, uid: str, request_id: str) -> int | None:
        ahead = 0
        for lane in self._lanes.get(uid, ()):
            place = lane.place(request_id)
            if place is not None:
                return ahead + place
            ahead += lane.size
        return None
