"""What the broker tells facades about the cluster: model descriptions and worker pages,
read from its tables."""

from __future__ import annotations

import time
from typing import TypeVar

from xb.broker.cluster import Cluster
from xb.broker.table import Model
from xb.core import protocol as p

T = TypeVar("T")


def page_of(items: list[T], offset: int, limit: int) -> list[T]:
    """One page of a list reply: at most ``PAGE_SIZE`` entries, whatever a peer asks."""
    start = max(offset, 0)
    return items[start : start + max(min(limit, p.PAGE_SIZE), 0)]


def model_info(cluster: Cluster, model: Model, request_id: str) -> p.ModelInfo:
    """``model`` as a facade describes it, with where each replica runs."""
    places = []
    for replica in model.replicas.values():
        worker = cluster.workers.get(replica.worker)
        places.append(
            p.ReplicaPlace(
                replica_id=replica.replica_id,
                worker_id=worker.worker_id if worker else "",
                host=worker.host if worker else "",
                state=replica.state,
                error=replica.error,
                progress=replica.progress,
            )
        )
    return p.ModelInfo(
        request_id=request_id,
        model_uid=model.uid,
        model_name=model.spec.model_name,
        model_path=model.spec.model_path,
        model_format=model.spec.model_format,
        engine=model.spec.engine,
        model_type=model.spec.model_type,
        n_ctx=model.spec.n_ctx,
        abilities=model.abilities,
        replica=model.wanted,
        replicas=places,
        created=model.created,
        queued=cluster.scheduler.waiting(model.uid),
        served=model.served,
        tokens=model.tokens,
        model_size_in_billions=model.spec.model_size_in_billions,
        quantization=model.spec.quantization,
        n_parallel=model.spec.n_parallel,
    )


def cluster_page(
    cluster: Cluster, request_id: str, offset: int = 0, limit: int = p.PAGE_SIZE
) -> p.Cluster:
    """One page of the workers, each with the replicas it hosts."""
    now = time.monotonic()
    infos = []
    for worker in page_of(list(cluster.workers.values()), offset, limit):
        statuses = [
            p.ReplicaStatus(
                r.replica_id,
                m.uid,
                m.spec.model_name,
                r.state,
                r.error,
                r.in_flight,
                progress=r.progress,
                slots=r.slots,
                cached_tokens=r.cached_tokens,
            )
            for m in cluster.models.values()
            for r in m.replicas.values()
            if r.worker == worker.identity
        ]
        infos.append(worker.info(now, statuses))
    return p.Cluster(request_id, infos, len(cluster.workers))
