"""The scheduling seam: which waiting request a free slot takes next.

The broker owns replicas and in-flight requests; a ``Scheduler`` owns what waits for a
slot. The broker tells it what arrives (``admit``), what is retried (``requeue``), what
goes away (``cancel``, ``withdraw``, ``drain``), and asks it for the next assignment of
a waiting request to a ready replica with a free slot (``next``) until it answers None.
An assignment is taken off the queue when it is handed out; the broker then counts the
slot as busy, so the next answer sees it. ``order`` and ``position`` say where waiting
requests stand in line, for the facade's streams (``broker/positions.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, deque

from xb.broker.affinity import Affinity
from xb.broker.routing import RoutingPolicy
from xb.broker.table import Model, Queued, Replica


class Scheduler(ABC):
    @abstractmethod
    def admit(self, model: Model, entry: Queued) -> str | None:
        """Queue a new request; the reason it is refused (the queue is full), or None."""

    @abstractmethod
    def requeue(self, model: Model, entry: Queued) -> None:
        """Queue a retried request ahead of the others (it waited once already)."""

    @abstractmethod
    def next(self, model: Model) -> tuple[Queued, Replica] | None:
        """The next waiting request and the ready replica it goes to, off the queue; None
        when nothing waits or no ready replica has a free slot."""

    @abstractmethod
    def waiting(self, uid: str) -> int:
        """How many requests of model ``uid`` wait."""

    @abstractmethod
    def tenants(self, uid: str) -> dict[str, int]:
        """How many requests of model ``uid`` wait, by tenant."""

    @abstractmethod
    def cancel(self, request_id: str) -> Queued | None:
        """Take the waiting request ``request_id`` off its queue, if it waits."""

    @abstractmethod
    def withdraw(self, client: bytes) -> None:
        """Forget every waiting request of ``client`` (a facade that went away)."""

    @abstractmethod
    def drain(self, uid: str) -> list[Queued]:
        """Take every waiting request of model ``uid`` off its queue, oldest first."""

    @abstractmethod
    def order(self, uid: str) -> list[Queued]:
        """The waiting requests of model ``uid`` in the order ``next`` would hand them
        out if nothing else arrived."""

    @abstractmethod
    def position(self, uid: str, request_id: str) -> int | None:
        """Where ``request_id`` stands in ``order(uid)``, 1 for the next; None when it
        does not wait."""


class FirstComeFirstServed(Scheduler):
    """One queue per model, served in arrival order, each to the replica ``policy`` picks
    (where the conversation's prefix is cached, if it has a free slot); at most
    ``max_queue`` requests wait per model."""

    def __init__(self, policy: RoutingPolicy, affinity: Affinity, max_queue: int) -> None:
        self.policy = policy
        self.affinity = affinity
        self.max_queue = max_queue
        self._queues: dict[str, deque[Queued]] = {}

    def admit(self, model: Model, entry: Queued) -> str | None:
        queue = self._queues.setdefault(model.uid, deque())
        if len(queue) >= self.max_queue:
            return f"model {model.uid!r} has {len(queue)} requests waiting; retry later"
        queue.append(entry)
        return None

    def requeue(self, model: Model, entry: Queued) -> None:
        # A retry may pass the bound by the few requests that were in flight: they were
        # admitted once, and ending them instead would lose them.
        self._queues.setdefault(model.uid, deque()).appendleft(entry)

    def next(self, model: Model) -> tuple[Queued, Replica] | None:
        queue = self._queues.get(model.uid)
        if not queue:
            return None
        head = queue[0]
        ready = model.ready()
        # A retried request goes to another replica than the one it failed on, while
        # there is one.
        elsewhere = [r for r in ready if r.replica_id != head.avoid] or ready
        replica = self.policy.choose(elsewhere, self.affinity.lookup(head.submit.prefix_keys))
        if replica is None:
            return None
        queue.popleft()
        return head, replica

    def waiting(self, uid: str) -> int:
        queue = self._queues.get(uid)
        return len(queue) if queue else 0

    def tenants(self, uid: str) -> dict[str, int]:
        return dict(Counter(entry.submit.tenant for entry in self._queues.get(uid, ())))

    def cancel(self, request_id: str) -> Queued | None:
        for queue in self._queues.values():
            for entry in queue:
                if entry.submit.request_id == request_id:
                    queue.remove(entry)
                    return entry
        return None

    def withdraw(self, client: bytes) -> None:
        for uid, queue in self._queues.items():
            if any(entry.client == client for entry in queue):
                self._queues[uid] = deque(e for e in queue if e.client != client)

    def drain(self, uid: str) -> list[Queued]:
        return list(self._queues.pop(uid, ()))

    def order(self, uid: str) -> list[Queued]:
        return list(self._queues.get(uid, ()))

    def position(self, uid: str, request_id: str) -> int | None:
        queue = self._queues.get(uid, ())
        if queue and queue[-1].submit.request_id == request_id:
            return len(queue)  # the request just admitted, the one asked about most
        for place, entry in enumerate(queue, 1):
            if entry.submit.request_id == request_id:
                return place
        return None
