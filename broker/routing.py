"""The routing-policy seam: which ready replica serves the next request."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod

from xb.broker.table import Replica


class RoutingPolicy(ABC):
    @abstractmethod
    def choose(self, replicas: list[Replica], slots: dict[bytes, int]) -> Replica | None:
        """A replica with a free slot, or None when every one is busy."""


class LeastLoaded(RoutingPolicy):
    """The replica with the fewest requests in flight; ties broken at random.

    The broker counts every request it sends and every FINAL or ERROR it forwards, so its
    count is exact and current, where a heartbeat's queue depth is up to an interval old.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, replicas: list[Replica], slots: dict[bytes, int]) -> Replica | None:
        free = [r for r in replicas if r.in_flight < slots.get(r.worker, 1)]
        if not free:
            return None
        least = min(r.in_flight for r in free)
        return self._rng.choice([r for r in free if r.in_flight == least])
