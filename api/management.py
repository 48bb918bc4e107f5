"""Management routes, shaped like Xinference's REST API: health, cluster and models.

Registrations are in ``api.registrations``; routes only Xinference's clients call are in
``api.xinference``. Both reach the broker and the registry through the helpers here.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from xb.api.auth import ADMIN, INFERENCE, OPEN, scope
from xb.api.body import CheckedRoute
from xb.api.context import facade
from xb.api.describe import model_entry
from xb.api.errors import APIError
from xb.api.launching import launch_message, progress
from xb.api.metrics import Metrics
from xb.api.schemas import AddReplicasRequest, LaunchRequest, ScaleRequest
from xb.api.streaming import fail
from xb.core import __version__, engines
from xb.core import protocol as p
from xb.core.registry import ModelFamily, RegistryError, parse_family

T = TypeVar("T")
log = logging.getLogger("xb.api")

router = APIRouter(route_class=CheckedRoute)
USAGE_TIMEOUT = 5.0  # seconds /metrics waits for the broker's usage by tenant


async def families(request: Request) -> dict[str, ModelFamily]:
    """Every family: the built-in ones, and those registered with the broker (so every
    facade sees the same), which the facade's registry then holds for this request."""
    bodies = await _every(request, p.ListFamilies, p.Families, lambda page: page.families)
    registered = {}
    for body in bodies:
        try:
            family = parse_family(body)
        except RegistryError as exc:  # a newer broker's, say: the others still count
            log.warning("ignoring a registered family the broker sent: %s", exc)
            continue
        registered[family.model_name] = family
    registry = facade(request).registry
    registry.use(registered)
    return registry.all()


async def call(
    request: Request,
    make: Callable[[str], p.Message],
    expect: type[p.Message],
    timeout: float | None = 30.0,
) -> Any:
    """Send a management message; its reply of type ``expect``, or the error as HTTP."""
    reply = await facade(request).bridge.call(make, timeout)
    if not isinstance(reply, expect):
        raise fail(reply)
    return reply


async def _every(
    request: Request,
    ask: Callable[..., p.Message],
    expect: type[p.Message],
    entries: Callable[[Any], list[T]],
) -> list[T]:
    """Every entry of a list reply, read page by page (the broker answers ``PAGE_SIZE``
    at a time)."""
    out: list[T] = []
    while True:
        page = await call(request, functools.partial(ask, offset=len(out)), expect)
        more = entries(page)
        out += more
        if not more or len(out) >= page.total:
            return out


async def all_models(request: Request) -> list[p.ModelInfo]:
    return await _every(request, p.ListModels, p.ModelList, lambda page: page.models)


async def all_workers(request: Request) -> list[p.WorkerInfo]:
    return await _every(request, p.ClusterInfo, p.Cluster, lambda page: page.workers)


async def describe(request: Request, uid: str) -> p.ModelInfo:
    info: p.ModelInfo = await call(request, lambda rid: p.DescribeModel(rid, uid), p.ModelInfo)
    return info


async def entry(request: Request, info: p.ModelInfo) -> dict[str, Any]:
    return model_entry(info, (await families(request)).get(info.model_name))


# ---- health, cluster, metrics ---------------------------------------------------------


@router.get("/health", openapi_extra=scope(OPEN))
async def health(request: Request) -> JSONResponse:
    bridge = facade(request).bridge
    if not bridge.answered:  # healthy once the broker has answered, not before
        raise APIError(503, "the broker has not answered yet", type="server_error")
    if not bridge.up:
        raise APIError(503, "the broker is not answering", type="server_error")
    return JSONResponse({"status": "ok", "version": __version__})


@router.get("/v1/cluster/info", openapi_extra=scope(ADMIN))
async def cluster_info(request: Request) -> Response:
    workers = await all_workers(request)
    return Response(msgspec.json.encode(workers), media_type="application/json")


@router.get("/metrics", openapi_extra=scope(ADMIN))
async def prometheus(request: Request) -> Response:
    models = await all_models(request)
    workers = await all_workers(request)
    # A broker older than usage counting never answers this call: the scrape goes on
    # without the tenant metrics rather than wait for it.
    reply = await facade(request).bridge.call(
        lambda rid: p.UsageCall(rid, lifetime=True), USAGE_TIMEOUT
    )
    usage = reply if isinstance(reply, p.UsageReport) else None
    if usage is None:
        log.warning("no usage by tenant for /metrics: %s", getattr(reply, "message", reply))
    metrics: Metrics = facade(request).metrics
    body = metrics.render(models, workers, facade(request).bridge.stats, usage)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


# ---- models ---------------------------------------------------------------------------


@router.get("/v1/models", openapi_extra=scope(INFERENCE))
async def list_models(request: Request) -> JSONResponse:
    models = await all_models(request)
    known = await families(request)
    data = [model_entry(m, known.get(m.model_name)) for m in models]
    return JSONResponse({"object": "list", "data": data})


@router.post("/v1/models", openapi_extra=scope(ADMIN))
async def launch_model(
    request: Request, body: LaunchRequest, wait_ready: bool | None = Query(None)
) -> JSONResponse:
    if wait_ready is not None:  # Xinference's client sends it as a query parameter
        body = body.model_copy(update={"wait_ready": wait_ready})
    await families(request)  # the broker's registrations, for a launch by family name
    launch = launch_message(body, facade(request).registry, "")  # refuse bad input here
    # Downloading and loading take as long as they take; a dead broker still ends the wait.
    reply: p.ModelInfo = await call(
        request,
        lambda rid: msgspec.structs.replace(launch, request_id=rid),
        p.ModelInfo,
        timeout=None,
    )
    return JSONResponse({"model_uid": reply.model_uid})


@router.get("/v1/models/{model_uid}", openapi_extra=scope(INFERENCE))
async def describe_model(request: Request, model_uid: str) -> JSONResponse:
    return JSONResponse(await entry(request, await describe(request, model_uid)))


@router.get("/v1/models/{model_uid}/progress", openapi_extra=scope(ADMIN))
async def launch_progress(request: Request, model_uid: str) -> JSONResponse:
    return JSONResponse(progress(await describe(request, model_uid)))


@router.delete("/v1/models/{model_uid}", openapi_extra=scope(ADMIN))
async def terminate_model(request: Request, model_uid: str) -> JSONResponse:
    await call(request, lambda rid: p.TerminateModel(rid, model_uid), p.Ack)
    return JSONResponse({"model_uid": model_uid, "terminated": True})


@router.post("/v1/models/{model_uid}/cancel", openapi_extra=scope(ADMIN))
async def cancel_launch(request: Request, model_uid: str) -> JSONResponse:
    if progress(await describe(request, model_uid))["stage"] == "ready":
        raise APIError(400, f"model {model_uid!r} is already ready; DELETE it to stop it")
    await call(request, lambda rid: p.TerminateModel(rid, model_uid), p.Ack)
    return JSONResponse({"model_uid": model_uid, "cancelled": True})


# ---- replicas: PUT sets the count (xb's scale), POST adds some (Xinference's) ---------


async def _scale(request: Request, model_uid: str, replica: int) -> JSONResponse:
    reply: p.ModelInfo = await call(
        request, lambda rid: p.ScaleModel(rid, model_uid, replica), p.ModelInfo, None
    )
    return JSONResponse(await entry(request, reply))


@router.put("/v1/models/{model_uid}/replicas", openapi_extra=scope(ADMIN))
async def scale_model(request: Request, model_uid: str, body: ScaleRequest) -> JSONResponse:
    return await _scale(request, model_uid, body.replica)


@router.post("/v1/models/{model_uid}/replicas", openapi_extra=scope(ADMIN))
async def add_replicas(
    request: Request, model_uid: str, body: AddReplicasRequest | None = None
) -> JSONResponse:
    body = body or AddReplicasRequest()
    info = await describe(request, model_uid)
    # New replicas are copies of the running ones: per-replica settings cannot differ.
    for name, value in (("replica_config", body.replica_config), ("n_gpu", body.n_gpu)):
        if value not in (None, "auto", [], {}):
            raise APIError(
                400,
                f"'{name}' cannot be set for added replicas: they copy the running ones",
                param=name,
                code="unsupported_parameter",
            )
    running = engines.of_model(info.engine, info.model_format)
    if body.model_engine is not None and (
        running is None or body.model_engine.lower() not in running.names()
    ):
        raise APIError(
            400,
            f"model_engine {body.model_engine!r} cannot run {model_uid!r}; its replicas run "
            f"on {running.name if running else info.engine or info.model_format}",
            param="model_engine",
        )
    return await _scale(request, model_uid, len(info.replicas) + body.replica)


@router.get("/v1/models/{model_uid}/replicas", openapi_extra=scope(ADMIN))
async def list_replicas(request: Request, model_uid: str) -> JSONResponse:
    info = await describe(request, model_uid)
    return JSONResponse(msgspec.to_builtins(info.replicas))


@router.delete("/v1/models/{model_uid}/replicas/{replica_id}", openapi_extra=scope(ADMIN))
async def terminate_replica(request: Request, model_uid: str, replica_id: str) -> JSONResponse:
    await describe(request, model_uid)  # an unknown model is a 404 first
    raise APIError(
        400,
        f"xb does not stop a chosen replica ({replica_id!r}); scale the model down with "
        f'PUT /v1/models/{model_uid}/replicas {{"replica": N}} and the least busy '
        "replicas stop",
        param="replica_id",
        code="unsupported_parameter",
    )
