"""Registration routes, shaped like Xinference's: list, show, register and unregister
families. A family registers in xb's own JSON shape or in Xinference's custom-model one.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from xb.api.auth import ADMIN, scope
from xb.api.body import CheckedRoute
from xb.api.context import facade
from xb.api.errors import APIError
from xb.api.management import families
from xb.api.schemas import RegisterRequest
from xb.api.streaming import fail
from xb.core import protocol as p
from xb.core.paths import PathRefused, check_folder
from xb.core.registry import ModelFamily, RegistryError, parse_family
from xb.core.xinference_family import from_xinference

router = APIRouter(route_class=CheckedRoute)
log = logging.getLogger("xb.api")


def summary(family: ModelFamily, builtin: bool) -> dict[str, Any]:
    specs = family.model_specs
    return {
        "model_name": family.model_name,
        "model_type": family.model_type,
        "model_lang": family.model_lang,
        "model_ability": family.model_ability,
        "model_description": family.model_description,
        "model_formats": sorted({s.model_format for s in specs}),
        "model_sizes_in_billions": sorted({s.model_size_in_billions for s in specs}, key=_size),
        "quantizations": sorted({q for s in specs for q in s.quantizations}),
        "context_length": family.context_length,
        "is_builtin": builtin,
    }


def _size(size: str) -> float:
    return float(size.replace("_", "."))


async def of_type(request: Request, model_type: str) -> dict[str, tuple[ModelFamily, bool]]:
    """The families of ``model_type`` by name, each with whether it is built in."""
    if model_type not in ("LLM", "embedding"):
        raise APIError(404, f"model type {model_type!r} has no registrations; use LLM or embedding")
    builtin = facade(request).registry.builtin
    found = {n: (f, n in builtin) for n, f in (await families(request)).items()}
    return {n: (f, b) for n, (f, b) in found.items() if f.model_type == model_type}


@router.get("/v1/model_registrations/{model_type}", openapi_extra=scope(ADMIN))
async def list_registrations(
    request: Request, model_type: str, detailed: bool = Query(False)
) -> JSONResponse:
    found = sorted((await of_type(request, model_type)).items())
    if detailed:  # Xinference's detailed listing: every field of every family
        return JSONResponse([{**msgspec.to_builtins(f), **summary(f, b)} for _, (f, b) in found])
    return JSONResponse([summary(f, b) for _, (f, b) in found])


@router.get("/v1/model_registrations/{model_type}/{model_name}", openapi_extra=scope(ADMIN))
async def get_registration(request: Request, model_type: str, model_name: str) -> JSONResponse:
    found = (await of_type(request, model_type)).get(model_name)
    if found is None:
        raise APIError(404, f"no {model_type} family named {model_name!r}", code="model_not_found")
    family, builtin = found
    return JSONResponse({**msgspec.to_builtins(family), "is_builtin": builtin})


@router.post("/v1/model_registrations/{model_type}", openapi_extra=scope(ADMIN))
async def register(request: Request, model_type: str, body: RegisterRequest) -> JSONResponse:
    known = await families(request)
    await of_type(request, model_type)
    try:
        data = json.loads(body.model) if isinstance(body.model, str) else body.model
        if not isinstance(data, dict):
            raise RegistryError("the family is not a JSON object")
        converted, skipped = from_xinference(data, model_type, known)
        family = parse_family(json.dumps(converted))
        if family.model_name in facade(request).registry.builtin:
            raise RegistryError(
                f"{family.model_name!r} is a built-in family and cannot be replaced; "
                "register it under another model_name"
            )
        await run_in_threadpool(_check_uris, family)
    except (RegistryError, ValueError, PathRefused) as exc:  # ValueError: JSON unparsed
        raise APIError(400, f"invalid model family: {exc}", param="model") from exc
    # The broker keeps registrations, for every facade and every worker.
    encoded = msgspec.json.encode(family)
    reply = await facade(request).bridge.call(
        lambda rid: p.RegisterFamily(rid, encoded, body.overwrite, body.persist)
    )
    if isinstance(reply, p.Error) and reply.code == p.ErrorCode.INVALID_REQUEST:
        raise APIError(400, f"invalid model family: {reply.message}", param="model")
    if not isinstance(reply, p.Ack):
        raise fail(reply)
    for note in skipped:
        log.warning("registering %s: %s", family.model_name, note)
    # Registrations are the broker's, for every worker: a worker_ip needs nothing more.
    return JSONResponse({"model_name": family.model_name, "registered": True, "skipped": skipped})


def _check_uris(family: ModelFamily) -> None:
    """A ``model_uri`` names a file (or a folder of them) on the workers: it must lie in
    the model folders, which the broker checks against its own (``--model-dir``) and
    each worker again against its own when it loads the file."""
    for spec in family.model_specs:
        if spec.model_uri is not None:
            check_folder(spec.model_uri)


@router.delete("/v1/model_registrations/{model_type}/{model_name}", openapi_extra=scope(ADMIN))
async def unregister(request: Request, model_type: str, model_name: str) -> JSONResponse:
    found = (await of_type(request, model_type)).get(model_name)
    if found is None:
        raise APIError(404, f"no registered {model_type} family named {model_name!r}")
    reply = await facade(request).bridge.call(lambda rid: p.UnregisterFamily(rid, model_name))
    if isinstance(reply, p.Error) and reply.code == p.ErrorCode.INVALID_REQUEST:
        raise APIError(400, reply.message)
    if not isinstance(reply, p.Ack):
        raise fail(reply)
    return JSONResponse({"model_name": model_name, "unregistered": True})
