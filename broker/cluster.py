"""The broker's picture of the cluster: the workers connected, the models and their
replicas, the requests in flight, and what waits for a slot (the scheduler's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from xb.broker.affinity import Affinity
from xb.broker.scheduler import Scheduler
from xb.broker.table import InFlight, Model, WorkerEntry


@dataclass
class Cluster:
    scheduler: Scheduler
    affinity: Affinity  # which replica served each conversation (the scheduler reads it)
    workers: dict[bytes, WorkerEntry] = field(default_factory=dict)  # by connection identity
    models: dict[str, Model] = field(default_factory=dict)  # by uid, each with its replicas
    in_flight: dict[str, InFlight] = field(default_factory=dict)  # by request id
