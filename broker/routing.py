"""The routing-policy seam: which ready replica serves the next request."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod

from xb.broker.table import Replica


class RoutingPolicy(ABC):
    @abstractmethod
    def choose(self, replicas: list[Replica], preferred: str | None = None) -> Replica | None:
        """A replica with a free slot, or None when every slot is busy. ``preferred`` names
        the replica that served this conversation before, where its prefix is cached."""


class LeastLoaded(RoutingPolicy):
    """The preferred replica when it has a free slot; else the one with the smallest share
    of its slots busy, ties broken at random.

    The broker counts every request it sends and every FINAL or ERROR it forwards, so its
    count is exact and current, where a heartbeat's queue depth is up to an interval old.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, replicas: list[Replica], preferred: str | None = None) -> Replica | None:
        free = [r for r in replicas if r.in_flight < r.slots]
        if not free:
            return None
        for replica in free:
            if replica.replica_id == preferred:
                return replica
        least = min(r.in_flight / r.slots for r in free)
        return self._rng.choice([r for r in free if r.in_flight / r.slots == least])
