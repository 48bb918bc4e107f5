"""From a launch request to the protocol's launch: files, registry families, engines."""

from __future__ import annotations

import json
import logging
from typing import Any

import msgspec

from xb.api import compat
from xb.api.errors import APIError
from xb.api.schemas import LaunchRequest
from xb.core import engines
from xb.core import protocol as p
from xb.core.demo_model import DEMO_MODEL_NAME
from xb.core.engines import EngineError, EngineKind
from xb.core.modelfile import kv_cells
from xb.core.registry import (
    Registry,
    RegistryError,
    Spec,
    estimate_from_spec,
    file_names,
    local_path,
    pick_spec,
)
from xb.core.settings import DEFAULT_PARALLEL

log = logging.getLogger("xb.api")


def _engine(body: LaunchRequest, fmt: str | None, path: str | None) -> tuple[EngineKind, str]:
    try:
        return engines.choose(body.model_engine, fmt, path)
    except EngineError as exc:
        raise APIError(400, str(exc), param=exc.param) from exc


def launch_message(body: LaunchRequest, registry: Registry, request_id: str) -> p.LaunchModel:
    """The protocol launch for Xinference's launch body; refuses what xb cannot honour."""
    kind, fmt = _engine(body, body.model_format, body.model_path)
    n_gpu_layers = body.n_gpu_layers
    if n_gpu_layers is None:
        # Xinference: n_gpu null (given, not left out) or 0 means the CPU; "auto" the GPU.
        cpu = body.n_gpu == 0 or (body.n_gpu is None and "n_gpu" in body.model_fields_set)
        n_gpu_layers = 0 if cpu else -1  # -1: every layer on the GPU, if built so
    extra: dict[str, Any] = compat.launch_extras(dict(body.model_extra or {}))
    if extra:
        log.info("passing launch fields %s to the engine", sorted(extra))
    spec = p.ModelSpec(
        model_uid=body.model_uid or "",
        model_name=body.model_name,
        model_path=body.model_path,
        n_ctx=body.n_ctx,
        model_format=fmt,
        model_type=body.model_type,
        n_gpu_layers=n_gpu_layers,
        engine_kwargs=json.dumps(extra),
    )
    need, abilities = 0, ["embed"] if body.model_type == "embedding" else []
    chosen: tuple[Spec, str] | None = None
    if not body.model_path and body.model_name != DEMO_MODEL_NAME:
        # The format asked for, or the engine's: the family's spec must be one it reads.
        given = fmt if body.model_format is not None or body.model_engine is not None else None
        spec, chosen, abilities = _from_registry(body, registry, spec, given)
        kind, fmt = _engine(body, spec.model_format, spec.model_path)
    spec = _with_slots(body, kind, msgspec.structs.replace(spec, engine=kind.name))
    spec, draft_chosen = _with_drafts(body, kind, registry, spec)
    if chosen is not None:
        cells = kv_cells(spec.n_ctx, spec.n_parallel)
        need = estimate_from_spec(*chosen, cells)
        if draft_chosen is not None:  # the draft model's weights and cells too
            need += estimate_from_spec(*draft_chosen, cells)
    return p.LaunchModel(
        request_id=request_id,
        spec=spec,
        replica=body.replica,
        worker=body.worker or body.worker_ip,
        wait_ready=body.wait_ready,
        request_limits=body.request_limits,
        need=need,
        abilities=abilities,
    )


def _with_slots(body: LaunchRequest, kind: EngineKind, spec: p.ModelSpec) -> p.ModelSpec:
    """Sequences per replica: several for chat models on an engine that batches, one for
    the others."""
    batched = kind.batches and spec.model_type == "LLM"
    if body.n_parallel is not None and body.n_parallel > 1 and not batched:
        why = kind.alone or "an embedding request already embeds all its inputs together"
        raise APIError(400, f"n_parallel must be 1 for this model: {why}", param="n_parallel")
    n_parallel = body.n_parallel or (DEFAULT_PARALLEL if batched else 1)
    cache = -1 if body.prefix_cache_tokens is None else body.prefix_cache_tokens
    return msgspec.structs.replace(spec, n_parallel=n_parallel, prefix_cache_tokens=cache)


def _with_drafts(
    body: LaunchRequest, kind: EngineKind, registry: Registry, spec: p.ModelSpec
) -> tuple[p.ModelSpec, tuple[Spec, str] | None]:
    """Speculative decoding's settings: n-gram drafts unless the launch says otherwise; a
    draft model (``draft_model``, which implies ``speculative: "draft"``) as a file on the
    worker or a registry family's GGUF file. Also the draft model's registry spec, for
    the estimate, when it is to be downloaded."""
    speculative = body.speculative or ("draft" if body.draft_model else spec.speculative)
    draft_tokens = body.draft_tokens or spec.draft_tokens
    spec = msgspec.structs.replace(spec, speculative=speculative, draft_tokens=draft_tokens)
    for field in ("draft_model_size_in_billions", "draft_quantization"):
        if body.draft_model is None and getattr(body, field) is not None:
            why = f"{field} picks from draft_model's registry family; give draft_model"
            raise APIError(400, why, param=field)
    if speculative != "draft":
        if body.draft_model is not None:
            raise APIError(
                400,
                f"draft_model drafts only with speculative 'draft', not {speculative!r}; "
                "leave speculative out or set it to 'draft'",
                param="speculative",
            )
        return spec, None
    if body.draft_model is None:
        raise APIError(
            400,
            "speculative 'draft' needs draft_model: a GGUF file with the model's vocabulary "
            "(a path in the model folders, or a registry family)",
            param="draft_model",
        )
    if not kind.drafts_with_model:
        why = f"{kind.name} replicas take no draft model; only llama.cpp's drafts with one"
        raise APIError(400, f"draft_model cannot be used here: {why}", param="draft_model")
    if spec.model_type != "LLM":
        why = "an embedding model generates no tokens to draft"
        raise APIError(400, f"draft_model cannot be used here: {why}", param="draft_model")
    return _draft_file(body, registry, spec)


def _draft_file(
    body: LaunchRequest, registry: Registry, spec: p.ModelSpec
) -> tuple[p.ModelSpec, tuple[Spec, str] | None]:
    """``draft_model`` as a path (it has a slash or ends with .gguf; the worker checks it
    lies in its model folders, as it checks model_path) or as a registry family: its GGUF
    spec of ``draft_model_size_in_billions`` (by default its smallest: a draft is there to
    be cheap) in ``draft_quantization`` (by default the spec's first)."""
    name = body.draft_model
    assert name is not None
    size, quantization = body.draft_model_size_in_billions, body.draft_quantization
    if "/" in name or "\\" in name or name.lower().endswith(".gguf"):
        chosen_by = (("draft_model_size_in_billions", size), ("draft_quantization", quantization))
        for field, value in chosen_by:
            if value is not None:
                why = f"draft_model {name!r} is a file; {field} picks from a registry family"
                raise APIError(400, why, param=field)
        return msgspec.structs.replace(spec, draft_model=name), None
    try:
        family = registry.get(name)
    except RegistryError as exc:
        raise APIError(400, f"draft_model {name!r}: {exc}", param="draft_model") from exc
    asked = "draft_model_size_in_billions" if size is not None else "draft_model"
    gguf = [s for s in family.model_specs if s.model_format == "gguf"]
    if size is None and gguf:
        size = min(gguf, key=Spec.size).model_size_in_billions
    wanted = None if size is None else str(size)
    try:  # the size alone first, so that each refusal names the field that asked for it
        chosen, first = pick_spec(family, "gguf", wanted, None)
        asked = "draft_quantization"
        if quantization is not None:
            chosen, first = pick_spec(family, "gguf", wanted, quantization)
    except RegistryError as exc:
        raise APIError(400, f"draft_model {name!r}: {exc}", param=asked) from exc
    quantization = first
    path = local_path(chosen, quantization)
    if path is not None:
        return msgspec.structs.replace(spec, draft_model=path), None
    download = _download(chosen, quantization)
    resolved = msgspec.structs.replace(spec, draft_model=name, draft_download=download)
    return resolved, (chosen, quantization)


def _download(chosen: Spec, quantization: str) -> p.Download:
    """What the worker fetches for a registry spec that is not on the facade's disk."""
    assert chosen.model_id is not None  # the registry checks: a hub id or a model_uri
    return p.Download(
        repo_id=chosen.model_id,
        files=file_names(chosen, quantization),
        revision=chosen.model_revision,
        sha256=chosen.checksums.get(quantization),
        package=chosen.python_package,
    )


def _from_registry(
    body: LaunchRequest, registry: Registry, spec: p.ModelSpec, fmt: str | None
) -> tuple[p.ModelSpec, tuple[Spec, str] | None, list[str]]:
    """The spec of a registry family; the file to estimate from (with its quantization),
    unless it is a file the worker measures itself; its abilities."""
    try:
        family = registry.get(body.model_name)
        size = None if body.model_size_in_billions is None else str(body.model_size_in_billions)
        chosen, quantization = pick_spec(family, fmt, size, body.quantization)
    except RegistryError as exc:
        raise APIError(
            400, f"cannot launch {body.model_name!r}: {exc}", param="model_name"
        ) from exc
    if body.model_type != family.model_type and "model_type" in body.model_fields_set:
        raise APIError(
            400,
            f"{family.model_name!r} is a {family.model_type} family, not {body.model_type}",
            param="model_type",
        )
    path = local_path(chosen, quantization)
    download = None
    if path is None:
        download = _download(chosen, quantization)
    resolved = msgspec.structs.replace(
        spec,
        model_path=path,
        model_format=chosen.model_format,
        model_type=family.model_type,
        download=download,
        chat_template=family.chat_template,
        stop=family.stop,
        stop_token_ids=family.stop_token_ids,
        model_size_in_billions=chosen.model_size_in_billions,
        quantization=quantization,
    )
    # A file on the worker is measured there, as a model_path launch is.
    return (
        resolved,
        None if path is not None else (chosen, quantization),
        list(family.model_ability),
    )


def progress(info: p.ModelInfo) -> dict[str, object]:
    """The launch's stage and a fraction done: downloading counts for 90% of a replica."""
    states = [r.state for r in info.replicas]
    ready = sum(s == p.ModelState.READY for s in states)
    if any(s == p.ModelState.FAILED for s in states):
        stage = "failed"
    elif states and ready == len(states):
        stage = "ready"
    elif any(r.progress and r.progress.stage == "downloading" for r in info.replicas):
        stage = "downloading"
    else:
        stage = "loading"
    done = 0.0
    for replica in info.replicas:
        if replica.state == p.ModelState.READY:
            done += 1.0
        elif replica.progress and replica.progress.stage == "downloading":
            done += 0.9 * replica.progress.done / max(replica.progress.total, 1)
        elif replica.progress and replica.progress.stage == "loading":
            done += 0.9
    download = [r.progress for r in info.replicas if r.progress is not None]
    errors = [r.error for r in info.replicas if r.error]
    return {
        "model_uid": info.model_uid,
        "stage": stage,
        "progress": round(done / len(states), 4) if states else 0.0,
        "replicas": {"ready": ready, "total": len(states)},
        "download": msgspec.to_builtins(download[0]) if download else None,
        "error": errors[0] if errors else None,
    }
