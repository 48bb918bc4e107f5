"""The broker's picture of the cluster: the workers connected, the models and their
replicas, the requests in flight, what waits for a slot (the scheduler's), and the
counters. The handler objects (``requests.py``, ``workers.py``, ``management.py``,
``heal.py``) share this one object; nothing else holds cluster state."""

from __future__ import annotations

from dataclasses import dataclass, field

from xb.broker.affinity import Affinity
from xb.broker.scheduler import Scheduler
from xb.broker.table import InFlight, Model, WorkerEntry
from xb.core import protocol as p


@dataclass
class Cluster:
    scheduler: Scheduler
    affinity: Affinity  # which replica served each conversation (the scheduler reads it)
    workers: dict[bytes, WorkerEntry] = field(default_factory=dict)  # by connection identity
    models: dict[str, Model] = field(default_factory=dict)  # by uid, each with its replicas
    in_flight: dict[str, InFlight] = field(default_factory=dict)  # by request id
    stats: p.BrokerStats = field(default_factory=p.BrokerStats)
    # A broker that has just restarted waits this long (monotonic time) for its workers
    # to announce what still runs before it places missing replicas or fails requests.
    settle_until: float = 0.0
