"""Routes that only Xinference's clients call, answered from what xb knows.

``get_workers_info``, the cluster's auth check, ``get_supervisor_info`` and
``query_engine_by_model_name`` work as against Xinference; xb's own views of the same
things are ``/v1/cluster/info`` and the registrations.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from xb.api.auth import ADMIN, OPEN, scope
from xb.api.body import CheckedRoute
from xb.api.context import facade
from xb.api.errors import APIError
from xb.api.management import all_workers
from xb.api.registrations import of_type
from xb.core.engines import reading

router = APIRouter(route_class=CheckedRoute)


@router.get("/v1/workers", openapi_extra=scope(ADMIN))
async def workers(request: Request) -> JSONResponse:
    """Xinference's worker list ("work-ip" and its "models"), with xb's fields beside."""
    out: list[dict[str, Any]] = []
    for worker in await all_workers(request):
        models: dict[str, dict[str, Any]] = {}
        for replica in worker.replicas:
            models.setdefault(
                replica.model_uid,
                {"model_name": replica.model_name, "replica_ids": [], "states": []},
            )
            models[replica.model_uid]["replica_ids"].append(replica.replica_id)
            models[replica.model_uid]["states"].append(replica.state)
        out.append({"work-ip": worker.host, "models": models, **msgspec.to_builtins(worker)})
    return JSONResponse(out)


@router.get("/v1/cluster/auth", openapi_extra=scope(OPEN))
async def cluster_auth(request: Request) -> JSONResponse:
    # The client asks before anything else, and sends its api_key only where this is true.
    keys = facade(request).api_keys
    return JSONResponse({"auth": keys.enabled})


@router.get("/v1/supervisor", openapi_extra=scope(ADMIN))
async def supervisor(request: Request) -> JSONResponse:
    return JSONResponse({"supervisor_ip": facade(request).bridge.address})


@router.get("/v1/engines/{model_type}/{model_name}", openapi_extra=scope(ADMIN))
async def engines(request: Request, model_type: str, model_name: str) -> JSONResponse:
    """The engines that run a family, each with the specs it can launch."""
    found = (await of_type(request, model_type)).get(model_name)
    if found is None:
        raise APIError(404, f"no {model_type} family named {model_name!r}", code="model_not_found")
    by_engine: dict[str, list[dict[str, Any]]] = {}
    for spec in found[0].model_specs:
        by_engine.setdefault(reading(spec.model_format).name, []).append(
            {
                "model_name": model_name,
                "model_format": spec.model_format,
                "model_size_in_billions": spec.model_size_in_billions,
                "quantizations": spec.quantizations,
            }
        )
    return JSONResponse(by_engine)


@router.get("/v1/engines/{model_name}", openapi_extra=scope(ADMIN))
async def engines_of_llm(request: Request, model_name: str) -> JSONResponse:
    return await engines(request, "LLM", model_name)
