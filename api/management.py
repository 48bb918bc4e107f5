"""Management routes, shaped like Xinference's REST API: models, cluster, registrations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from xb import __version__
from xb import protocol as p
from xb.api import convert
from xb.api.bridge import BrokerBridge
from xb.api.errors import APIError
from xb.api.launching import launch_message, progress
from xb.api.metrics import Metrics
from xb.api.schemas import LaunchRequest, RegisterRequest, ScaleRequest
from xb.api.streaming import fail
from xb.registry import ModelFamily, Registry, RegistryError, parse_family

router = APIRouter()


def _bridge(request: Request) -> BrokerBridge:
    bridge: BrokerBridge = request.app.state.bridge
    return bridge


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def _call(
    request: Request,
    make: Callable[[str], p.Message],
    expect: type[p.Message],
    timeout: float | None = 30.0,
) -> Any:
    """Send a management message; its reply of type ``expect``, or the error as HTTP."""
    reply = await _bridge(request).call(make, timeout)
    if isinstance(reply, p.Error) and reply.code == p.ErrorCode.MODEL_FAILED:
        raise APIError(400, reply.message, code=reply.code.value)  # a load failed: the file
    if not isinstance(reply, expect):
        raise fail(reply)
    return reply


async def _describe(request: Request, uid: str) -> p.ModelInfo:
    info: p.ModelInfo = await _call(request, lambda rid: p.DescribeModel(rid, uid), p.ModelInfo)
    return info


# ---- health, cluster, metrics ---------------------------------------------------------


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    if not _bridge(request).up:
        raise APIError(503, "the broker is not answering", type="server_error")
    return JSONResponse({"status": "ok", "version": __version__})


@router.get("/v1/cluster/info")
async def cluster_info(request: Request) -> Response:
    reply: p.Cluster = await _call(request, lambda rid: p.ClusterInfo(rid), p.Cluster)
    return Response(msgspec.json.encode(reply.workers), media_type="application/json")


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    models: p.ModelList = await _call(request, lambda rid: p.ListModels(rid), p.ModelList)
    cluster: p.Cluster = await _call(request, lambda rid: p.ClusterInfo(rid), p.Cluster)
    metrics: Metrics = request.app.state.metrics
    body = metrics.render(models.models, cluster.workers)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


# ---- models ---------------------------------------------------------------------------


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    reply: p.ModelList = await _call(request, lambda rid: p.ListModels(rid), p.ModelList)
    return JSONResponse({"object": "list", "data": [convert.model_entry(m) for m in reply.models]})


@router.post("/v1/models")
async def launch_model(request: Request, body: LaunchRequest) -> JSONResponse:
    registry = _registry(request)
    launch = launch_message(body, registry, "")  # refuse bad input before the broker sees it
    # Downloading and loading take as long as they take; a dead broker still ends the wait.
    reply: p.ModelInfo = await _call(
        request,
        lambda rid: msgspec.structs.replace(launch, request_id=rid),
        p.ModelInfo,
        timeout=None,
    )
    return JSONResponse({"model_uid": reply.model_uid})


@router.get("/v1/models/{model_uid}")
async def describe_model(request: Request, model_uid: str) -> JSONResponse:
    return JSONResponse(convert.model_entry(await _describe(request, model_uid)))


@router.get("/v1/models/{model_uid}/progress")
async def launch_progress(request: Request, model_uid: str) -> JSONResponse:
    return JSONResponse(progress(await _describe(request, model_uid)))


@router.delete("/v1/models/{model_uid}")
async def terminate_model(request: Request, model_uid: str) -> JSONResponse:
    await _call(request, lambda rid: p.TerminateModel(rid, model_uid), p.Ack)
    return JSONResponse({"model_uid": model_uid, "terminated": True})


@router.post("/v1/models/{model_uid}/cancel")
async def cancel_launch(request: Request, model_uid: str) -> JSONResponse:
    if progress(await _describe(request, model_uid))["stage"] == "ready":
        raise APIError(400, f"model {model_uid!r} is already ready; DELETE it to stop it")
    await _call(request, lambda rid: p.TerminateModel(rid, model_uid), p.Ack)
    return JSONResponse({"model_uid": model_uid, "cancelled": True})


@router.post("/v1/models/{model_uid}/replicas")
async def scale_model(request: Request, model_uid: str, body: ScaleRequest) -> JSONResponse:
    reply: p.ModelInfo = await _call(
        request, lambda rid: p.ScaleModel(rid, model_uid, body.replica), p.ModelInfo, None
    )
    return JSONResponse(convert.model_entry(reply))


# ---- registrations --------------------------------------------------------------------


def _summary(family: ModelFamily, builtin: bool) -> dict[str, Any]:
    specs = family.model_specs
    return {
        "model_name": family.model_name,
        "model_type": family.model_type,
        "model_lang": family.model_lang,
        "model_ability": family.model_ability,
        "model_formats": sorted({s.model_format for s in specs}),
        "model_sizes_in_billions": sorted({s.model_size_in_billions for s in specs}, key=_size),
        "quantizations": sorted({q for s in specs for q in s.quantizations}),
        "context_length": family.context_length,
        "is_builtin": builtin,
    }


def _size(size: str) -> float:
    return float(size.replace("_", "."))


def _families(request: Request, model_type: str) -> dict[str, tuple[ModelFamily, bool]]:
    if model_type not in ("LLM", "embedding"):
        raise APIError(404, f"model type {model_type!r} has no registrations; use LLM or embedding")
    registry = _registry(request)
    found = {n: (f, True) for n, f in registry.builtin.items()}
    found.update({n: (f, False) for n, f in registry.custom().items()})
    return {n: (f, b) for n, (f, b) in found.items() if f.model_type == model_type}


@router.get("/v1/model_registrations/{model_type}")
async def list_registrations(request: Request, model_type: str) -> JSONResponse:
    families = _families(request, model_type)
    return JSONResponse([_summary(f, b) for _, (f, b) in sorted(families.items())])


@router.get("/v1/model_registrations/{model_type}/{model_name}")
async def get_registration(request: Request, model_type: str, model_name: str) -> JSONResponse:
    found = _families(request, model_type).get(model_name)
    if found is None:
        raise APIError(404, f"no {model_type} family named {model_name!r}", code="model_not_found")
    family, builtin = found
    return JSONResponse({**msgspec.to_builtins(family), "is_builtin": builtin})


@router.post("/v1/model_registrations/{model_type}")
async def register(request: Request, model_type: str, body: RegisterRequest) -> JSONResponse:
    _families(request, model_type)
    raw = body.model if isinstance(body.model, str) else msgspec.json.encode(body.model)
    try:
        family = parse_family(raw)
        if family.model_type != model_type:
            raise RegistryError(f"model_type is {family.model_type!r}, not {model_type!r}")
        _registry(request).register(family, overwrite=body.overwrite)
    except RegistryError as exc:
        raise APIError(400, f"invalid model family: {exc}", param="model") from exc
    return JSONResponse({"model_name": family.model_name, "registered": True})


@router.delete("/v1/model_registrations/{model_type}/{model_name}")
async def unregister(request: Request, model_type: str, model_name: str) -> JSONResponse:
    _families(request, model_type)
    try:
        _registry(request).unregister(model_name)
    except RegistryError as exc:
        status = 404 if "no registered family" in str(exc) else 400
        raise APIError(status, str(exc)) from exc
    return JSONResponse({"model_name": model_name, "unregistered": True})
