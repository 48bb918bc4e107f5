"""Model lifecycle on the broker: launch, scale, terminate and describe, and the removal
of replicas (scaled down, failed, or lost with their worker) with what they served."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import msgspec

from xb.broker.cluster import Cluster
from xb.broker.outbox import Outbox
from xb.broker.placement import PlacementError, place, replica_need
from xb.broker.requests import Requests
from xb.broker.state import DesiredState
from xb.broker.table import Model, Replica, Waiter, WorkerEntry
from xb.broker.views import cluster_page, model_info, page_of
from xb.core import engines
from xb.core import protocol as p
from xb.core.demo_model import DEMO_MODEL_NAME
from xb.core.engines import EngineError
from xb.core.modelfile import ModelFileError
from xb.core.paths import inside

log = logging.getLogger("xb.broker")


@dataclass
class Management:
    cluster: Cluster
    outbox: Outbox
    state: DesiredState
    requests: Requests

    # ---- describe ---------------------------------------------------------------------

    def list_models(self, client: bytes, message: p.ListModels) -> None:
        page = page_of(list(self.cluster.models.values()), message.offset, message.limit)
        infos = [model_info(self.cluster, m, message.request_id) for m in page]
        self.outbox.send(client, p.ModelList(message.request_id, infos, len(self.cluster.models)))

    def describe_model(self, client: bytes, message: p.DescribeModel) -> None:
        model = self.cluster.models.get(message.model_uid)
        if model is None:
            self.requests.unknown_model(client, message.request_id, message.model_uid)
        else:
            self.outbox.send(client, model_info(self.cluster, model, message.request_id))

    def cluster_info(self, client: bytes, message: p.ClusterInfo) -> None:
        page = cluster_page(self.cluster, message.request_id, message.offset, message.limit)
        self.outbox.send(client, page)

    # ---- launch and scale -------------------------------------------------------------

    def launch(self, client: bytes, launch: p.LaunchModel) -> None:
        rid = launch.request_id
        spec = launch.spec
        if not spec.model_uid:
            spec = msgspec.structs.replace(spec, model_uid=self._fresh_uid(spec.model_name))
        refusal = self._launch_refusal(spec, launch)
        if refusal is not None:
            self.outbox.error(client, rid, *refusal)
            return
        try:
            need = launch.need or self._estimate(spec)
        except (ModelFileError, EngineError) as exc:
            self.outbox.error(
                client, rid, p.ErrorCode.INVALID_REQUEST, f"cannot launch {spec.model_uid!r}: {exc}"
            )
            return
        model = Model(
            spec=spec,
            wanted=launch.replica,
            created=int(time.time()),
            abilities=list(launch.abilities),
            need=need,
            pinned_worker=launch.worker,
            request_limits=launch.request_limits,
        )
        model.next_index = model.first_index = self.state.next_index(spec.model_uid)
        try:
            added = self.add_replicas(model, launch.replica)
        except PlacementError as exc:
            self.outbox.error(
                client, rid, p.ErrorCode.LAUNCH_REFUSED, f"cannot launch {spec.model_uid!r}: {exc}"
            )
            return
        self.cluster.models[model.uid] = model
        self.state.save(model)
        if launch.wait_ready:
            model.waiters.append(Waiter(client, rid, added, initial=True))
        else:
            self.outbox.send(client, model_info(self.cluster, model, rid))

    def _launch_refusal(
        self, spec: p.ModelSpec, launch: p.LaunchModel
    ) -> tuple[p.ErrorCode, str] | None:
        if spec.model_uid in self.cluster.models:
            return (
                p.ErrorCode.DUPLICATE_MODEL,
                f"model uid {spec.model_uid!r} is already running; pick another uid or "
                "terminate it",
            )
        if not 1 <= launch.replica <= p.MAX_REPLICAS:
            return p.ErrorCode.INVALID_REQUEST, f"replica must be 1 to {p.MAX_REPLICAS}"
        if len(self.cluster.models) >= p.MAX_MODELS:
            return (
                p.ErrorCode.LAUNCH_REFUSED,
                f"{len(self.cluster.models)} models run already, the most one broker serves; "
                "terminate one first",
            )
        if spec.model_type not in ("LLM", "embedding"):
            return (
                p.ErrorCode.INVALID_REQUEST,
                f"model_type {spec.model_type!r} is not served; use 'LLM' or 'embedding'",
            )
        if not spec.model_path and spec.download is None and spec.model_name != DEMO_MODEL_NAME:
            return (
                p.ErrorCode.INVALID_REQUEST,
                f"model {spec.model_name!r} names no file; give model_path, a file on the "
                "worker, or launch a registered family",
            )
        if launch.worker and not self._candidates(launch.worker):
            known = ", ".join(w.worker_id for w in self.cluster.workers.values()) or "none"
            return (
                p.ErrorCode.UNKNOWN_WORKER,
                f"no worker named {launch.worker!r} (connected: {known})",
            )
        return None

    def _candidates(self, named: str | None) -> list[WorkerEntry]:
        workers = list(self.cluster.workers.values())
        if named:
            workers = [w for w in workers if named in (w.worker_id, w.host)]
        return workers

    def add_replicas(self, model: Model, count: int) -> set[str]:
        """Place and launch ``count`` more replicas of ``model``; their ids."""
        hosting: dict[bytes, int] = {}
        for replica in model.replicas.values():
            hosting[replica.worker] = hosting.get(replica.worker, 0) + 1
        gpu = model.spec.n_gpu_layers != 0
        chosen = place(self._candidates(model.pinned_worker), model.need, count, hosting, gpu=gpu)
        added: set[str] = set()
        for worker in chosen:
            while f"{model.uid}-{model.next_index}" in model.replicas:  # adopted ones, say
                model.next_index += 1
            replica_id = f"{model.uid}-{model.next_index}"
            model.next_index += 1
            need = replica_need(worker, model.need, gpu)
            model.replicas[replica_id] = Replica(
                replica_id, model.uid, worker.identity, p.ModelState.LOADING, reserved=need
            )
            worker.reserved += need
            self.outbox.send(worker.identity, p.Launch(replica_id, model.spec, model.need))
            added.add(replica_id)
        log.info(
            "launching %s (%s) on %s",
            model.uid,
            model.spec.model_name,
            ", ".join(w.worker_id for w in chosen),
        )
        return added

    def scale(self, client: bytes, message: p.ScaleModel) -> None:
        model = self.cluster.models.get(message.model_uid)
        if model is None:
            self.requests.unknown_model(client, message.request_id, message.model_uid)
            return
        if not 1 <= message.replica <= p.MAX_REPLICAS:
            self.outbox.error(
                client,
                message.request_id,
                p.ErrorCode.INVALID_REQUEST,
                f"replica must be 1 to {p.MAX_REPLICAS}; terminate the model to stop it",
            )
            return
        # A scale-up still loading is superseded: its caller hears so, and its failure
        # can no longer change the count asked for now.
        for waiter in [w for w in model.waiters if not w.initial]:
            model.waiters.remove(waiter)
            self.outbox.error(
                waiter.client,
                waiter.request_id,
                p.ErrorCode.CANCELLED,
                f"superseded: model {model.uid!r} was scaled to {message.replica} replicas",
            )
        current = len(model.replicas)
        model.wanted = message.replica
        if message.replica > current:
            try:
                added = self.add_replicas(model, message.replica - current)
            except PlacementError as exc:
                model.wanted = current
                self.state.save(model)
                self.outbox.error(
                    client,
                    message.request_id,
                    p.ErrorCode.LAUNCH_REFUSED,
                    f"cannot add replicas to {model.uid!r}: {exc}",
                )
                return
            self.state.save(model)
            model.waiters.append(Waiter(client, message.request_id, added))
            return
        self.state.save(model)
        doomed = least_useful(model, current - message.replica)
        self.remove_replicas(doomed, f"model {model.uid!r} was scaled down", terminate=True)
        self.outbox.send(client, model_info(self.cluster, model, message.request_id))

    def _fresh_uid(self, name: str) -> str:
        if name not in self.cluster.models:
            return name
        n = 1
        while f"{name}-{n}" in self.cluster.models:
            n += 1
        return f"{name}-{n}"

    @staticmethod
    def _estimate(spec: p.ModelSpec) -> int:
        """Bytes a replica needs, by its engine's estimate, when the file is readable here;
        0 leaves it to the worker. Only files inside this machine's model folders are
        opened (``xb.core.paths``)."""
        kind = engines.of_spec(spec)
        if not spec.model_path:
            return 0
        path = inside(spec.model_path)
        try:
            if path is None or not path.is_file():
                return 0  # on the worker's machine only, or not allowed: the worker checks
            need = kind.estimate(path, spec)
            if spec.speculative == "draft" and spec.draft_model and spec.draft_download is None:
                draft = inside(spec.draft_model)  # its weights and cells count as well
                if draft is None or not draft.is_file():
                    return 0
                need += kind.estimate(draft, spec)
            return need
        except OSError:
            return 0  # no permission here: the worker checks

    def check_waiters(self, model: Model) -> None:
        """Answer launches and scale-ups whose replicas are all ready, or one failed."""
        for waiter in list(model.waiters):
            if waiter not in model.waiters:
                continue  # answered already, by a call this loop made
            replicas = [model.replicas.get(rid) for rid in waiter.replica_ids]
            failed = [r for r in replicas if r is None or r.state == p.ModelState.FAILED]
            if failed:
                first = failed[0]
                reason = first.error if first is not None else "its worker was lost while loading"
                model.waiters.remove(waiter)
                self.outbox.error(
                    waiter.client,
                    waiter.request_id,
                    p.ErrorCode.LOAD_FAILED,
                    f"model {model.uid!r} failed to load: {reason}",
                )
                if waiter.initial:
                    self.drop_model(model, "its launch failed")
                    return
                self.remove_replicas(waiter.replica_ids, "load failed", terminate=True)
                model.wanted = len(model.replicas)
                self.state.save(model)
            elif all(r is not None and r.state == p.ModelState.READY for r in replicas):
                model.waiters.remove(waiter)
                self.outbox.send(waiter.client, model_info(self.cluster, model, waiter.request_id))

    # ---- removal ----------------------------------------------------------------------

    def remove_replicas(self, doomed: set[str], reason: str, *, terminate: bool) -> None:
        """Forget the replicas in ``doomed`` (telling their workers when ``terminate``).

        Their requests that have sent no token yet go back to the queue; the others end.
        """
        touched: list[Model] = []
        for model in self.cluster.models.values():
            gone = [model.replicas.pop(rid) for rid in list(model.replicas) if rid in doomed]
            for replica in gone:
                worker = self.cluster.workers.get(replica.worker)
                if worker is not None:
                    worker.reserved = max(worker.reserved - replica.reserved, 0)
                    if terminate:
                        self.outbox.send(worker.identity, p.Terminate(replica.replica_id))
            if gone:
                touched.append(model)
        self.cluster.affinity.forget(doomed)
        for request_id, flight in list(self.cluster.in_flight.items()):
            if (
                flight.replica_id not in doomed
                or self.cluster.in_flight.get(request_id) is not flight
            ):
                continue  # another replica's, or ended meanwhile (its client went away)
            del self.cluster.in_flight[request_id]
            owner = self.cluster.models.get(flight.submit.model_uid)
            if not self.requests.retry(flight, owner):
                self.outbox.error(
                    flight.client,
                    request_id,
                    p.ErrorCode.WORKER_LOST,
                    f"the replica serving this request went away ({reason})",
                )
        for model in touched:
            self.check_waiters(model)
            if model.uid in self.cluster.models:
                self.requests.dispatch(model)

    def forget_replicas(self, identity: bytes, keep: set[str], reason: str = "") -> None:
        """Drop the replicas on worker ``identity`` not in ``keep``, and end their requests;
        they are placed again at the next reconcile."""
        lost = {
            rid
            for model in self.cluster.models.values()
            for rid, replica in model.replicas.items()
            if replica.worker == identity and rid not in keep
        }
        reason = reason or "it no longer hosts the replica"
        now = time.monotonic()
        for model in self.cluster.models.values():
            if any(rid in model.replicas for rid in lost):
                model.retry_at = max(model.retry_at, now)
        self.remove_replicas(lost, f"the worker was lost: {reason}", terminate=False)

    def terminate(self, client: bytes, message: p.TerminateModel) -> None:
        model = self.cluster.models.get(message.model_uid)
        if model is None:
            self.requests.unknown_model(client, message.request_id, message.model_uid)
            return
        self.drop_model(model, "it was terminated")
        self.outbox.send(client, p.Ack(message.request_id))

    def drop_model(self, model: Model, reason: str) -> None:
        """Terminate every replica of ``model`` and end its requests and waiters."""
        self.cluster.models.pop(model.uid, None)
        self.state.forget(model.uid, model.next_index)
        for waiter in model.waiters:
            self.outbox.error(
                waiter.client,
                waiter.request_id,
                p.ErrorCode.CANCELLED,
                f"model {model.uid!r} is gone: {reason}",
            )
        model.waiters.clear()
        for replica in model.replicas.values():
            worker = self.cluster.workers.get(replica.worker)
            if worker is not None:
                worker.reserved = max(worker.reserved - replica.reserved, 0)
                self.outbox.send(worker.identity, p.Terminate(replica.replica_id))
        ended = [(entry.client, entry.submit) for entry in self.cluster.scheduler.drain(model.uid)]
        ended += [
            (flight.client, flight.submit)
            for flight in self.cluster.in_flight.values()
            if flight.submit.model_uid == model.uid
        ]
        for client, submit in ended:
            self.cluster.in_flight.pop(submit.request_id, None)
            self.outbox.error(
                client,
                submit.request_id,
                p.ErrorCode.UNKNOWN_MODEL,
                f"model {model.uid!r} is gone: {reason}",
            )


def least_useful(model: Model, count: int) -> set[str]:
    """The ``count`` replicas of ``model`` to stop first: not ready, then the least busy."""
    ranked = sorted(
        model.replicas.values(), key=lambda r: (r.state == p.ModelState.READY, r.in_flight)
    )
    return {r.replica_id for r in ranked[:count]}
