"""The OpenAI-compatible REST facade; it reaches the broker only through the protocol."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from xb import __version__
from xb import protocol as p
from xb.api import convert, errors
from xb.api.bridge import BrokerBridge, new_request_id
from xb.api.errors import APIError
from xb.api.metrics import Metrics
from xb.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    LaunchRequest,
    ScaleRequest,
)
from xb.api.streaming import Generation, fail
from xb.settings import HEARTBEAT_INTERVAL

log = logging.getLogger("xb.api")

LLAMA_ENGINES = {"llama.cpp", "llama-cpp", "llama_cpp", "llama-cpp-python"}
GGUF_FORMATS = {"gguf", "ggufv2"}


def launch_message(body: LaunchRequest, request_id: str) -> p.LaunchModel:
    """The protocol launch for Xinference's launch body; refuses what xb cannot honour."""
    if body.model_engine is not None and body.model_engine.lower() not in LLAMA_ENGINES:
        raise APIError(
            400,
            f"model_engine {body.model_engine!r} is not available; xb runs llama.cpp",
            param="model_engine",
        )
    if body.model_format is not None and body.model_format.lower() not in GGUF_FORMATS:
        raise APIError(
            400,
            f"model_format {body.model_format!r} is not served; use gguf",
            param="model_format",
        )
    n_gpu_layers = body.n_gpu_layers
    if n_gpu_layers is None:
        n_gpu_layers = 0 if body.n_gpu == 0 else -1  # -1: every layer on the GPU, if built so
    extra = dict(body.model_extra or {})
    if extra:
        log.info("passing launch fields %s to the engine", sorted(extra))
    return p.LaunchModel(
        request_id=request_id,
        model_name=body.model_name,
        model_uid=body.model_uid or "",
        model_path=body.model_path,
        replica=body.replica,
        n_ctx=body.n_ctx,
        worker=body.worker or body.worker_ip,
        model_type=body.model_type,
        n_gpu_layers=n_gpu_layers,
        engine_kwargs=json.dumps(extra),
        wait_ready=body.wait_ready,
        request_limits=body.request_limits,
    )


def progress(info: p.ModelInfo) -> dict[str, object]:
    states = [r.state for r in info.replicas]
    ready = sum(s == p.ModelState.READY for s in states)
    if any(s == p.ModelState.FAILED for s in states):
        stage = "failed"
    elif states and ready == len(states):
        stage = "ready"
    else:
        stage = "loading"
    errors_ = [r.error for r in info.replicas if r.error]
    return {
        "model_uid": info.model_uid,
        "stage": stage,
        "progress": ready / len(states) if states else 0.0,
        "replicas": {"ready": ready, "total": len(states)},
        "error": errors_[0] if errors_ else None,
    }


def create_app(
    broker_address: str,
    *,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    launch_on_start: list[str] | None = None,
) -> FastAPI:
    bridge = BrokerBridge(broker_address, heartbeat_interval=heartbeat_interval)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bridge.start()
        starter = asyncio.create_task(_launch_on_start(bridge, launch_on_start or []))
        try:
            yield
        finally:
            starter.cancel()
            await bridge.close()

    app = FastAPI(title="xb", version=__version__, lifespan=lifespan)
    app.state.bridge = bridge
    errors.install(app)

    async def call(
        make: Callable[[str], p.Message], expect: type[p.Message], timeout: float | None = 30.0
    ) -> p.Message:
        reply = await bridge.call(make, timeout)
        if not isinstance(reply, expect):
            raise fail(reply)
        return reply

    async def describe(uid: str) -> p.ModelInfo:
        reply = await call(lambda rid: p.DescribeModel(rid, uid), p.ModelInfo)
        assert isinstance(reply, p.ModelInfo)
        return reply

    # ---- health, cluster, metrics -----------------------------------------------------

    @app.get("/health")
    async def health() -> JSONResponse:
        if not bridge.up:
            raise APIError(503, "the broker is not answering", type="server_error")
        return JSONResponse({"status": "ok", "version": __version__})

    @app.get("/v1/cluster/info")
    async def cluster_info() -> Response:
        reply = await call(lambda rid: p.ClusterInfo(rid), p.Cluster)
        assert isinstance(reply, p.Cluster)
        return Response(msgspec.json.encode(reply.workers), media_type="application/json")

    @app.get("/metrics")
    async def prometheus() -> Response:
        models = await call(lambda rid: p.ListModels(rid), p.ModelList)
        cluster = await call(lambda rid: p.ClusterInfo(rid), p.Cluster)
        assert isinstance(models, p.ModelList) and isinstance(cluster, p.Cluster)
        body = metrics.render(models.models, cluster.workers)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---- management -------------------------------------------------------------------

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        reply = await call(lambda rid: p.ListModels(rid), p.ModelList)
        assert isinstance(reply, p.ModelList)
        data = [convert.model_entry(m) for m in reply.models]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/models")
    async def launch_model(body: LaunchRequest) -> JSONResponse:
        # Loading takes as long as it takes; a dead broker still ends the wait.
        reply = await bridge.call(lambda rid: launch_message(body, rid), timeout=None)
        if isinstance(reply, p.Error) and reply.code == p.ErrorCode.MODEL_FAILED:
            raise APIError(400, reply.message, code=reply.code.value)  # the file was the problem
        if not isinstance(reply, p.ModelInfo):
            raise fail(reply)
        return JSONResponse({"model_uid": reply.model_uid})

    @app.get("/v1/models/{model_uid}")
    async def describe_model(model_uid: str) -> JSONResponse:
        return JSONResponse(convert.model_entry(await describe(model_uid)))

    @app.get("/v1/models/{model_uid}/progress")
    async def launch_progress(model_uid: str) -> JSONResponse:
        return JSONResponse(progress(await describe(model_uid)))

    @app.delete("/v1/models/{model_uid}")
    async def terminate_model(model_uid: str) -> JSONResponse:
        await call(lambda rid: p.TerminateModel(rid, model_uid), p.Ack)
        return JSONResponse({"model_uid": model_uid, "terminated": True})

    @app.post("/v1/models/{model_uid}/cancel")
    async def cancel_launch(model_uid: str) -> JSONResponse:
        info = await describe(model_uid)
        if progress(info)["stage"] == "ready":
            raise APIError(400, f"model {model_uid!r} is already ready; DELETE it to stop it")
        await call(lambda rid: p.TerminateModel(rid, model_uid), p.Ack)
        return JSONResponse({"model_uid": model_uid, "cancelled": True})

    @app.post("/v1/models/{model_uid}/replicas")
    async def scale_model(model_uid: str, body: ScaleRequest) -> JSONResponse:
        reply = await bridge.call(lambda rid: p.ScaleModel(rid, model_uid, body.replica), None)
        if isinstance(reply, p.Error) and reply.code == p.ErrorCode.MODEL_FAILED:
            raise APIError(400, reply.message, code=reply.code.value)
        if not isinstance(reply, p.ModelInfo):
            raise fail(reply)
        return JSONResponse(convert.model_entry(reply))

    # ---- inference --------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        params = convert.chat_params(body)
        request_id = new_request_id()
        submits = [
            p.Submit(f"{request_id}-{i}", body.model, "chat", _seeded(params, i))
            for i in range(body.n)
        ]
        shape = convert.ChatShape(body.model, request_id, body.logprobs)
        generation = Generation(
            bridge,
            submits,
            shape,
            metrics,
            "chat",
            prompt_counted=[i == 0 for i in range(body.n)],
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
        )
        return await generation.respond(body.stream)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Response:
        request_id = new_request_id()
        submits: list[p.Submit] = []
        counted: list[bool] = []
        for prompt in convert.completion_prompts(body):
            params = convert.completion_params(body, prompt)
            for i in range(body.n):
                submits.append(
                    p.Submit(
                        f"{request_id}-{len(submits)}", body.model, "completion", _seeded(params, i)
                    )
                )
                counted.append(i == 0)
        shape = convert.TextShape(body.model, request_id, body.logprobs is not None)
        generation = Generation(
            bridge,
            submits,
            shape,
            metrics,
            "completions",
            prompt_counted=counted,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
        )
        return await generation.respond(body.stream)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> JSONResponse:
        inputs = convert.embedding_inputs(body)
        submit = p.Submit(
            new_request_id(), body.model, "embedding", p.GenerateParams(inputs=inputs)
        )
        stream = bridge.open(submit)
        try:
            message = await stream.next()
            while isinstance(message, p.Partial):
                message = await stream.next()
        finally:
            stream.close()
        if not isinstance(message, p.Final):
            error = fail(message) if message is not None else APIError(500, "no reply")
            metrics.request(body.model, "embeddings", error.status)
            raise error
        metrics.request(body.model, "embeddings", 200)
        return JSONResponse(convert.embedding_response(body.model, message, body.encoding_format))

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return APIError(405, f"{request.method} is not allowed on {request.url.path}").response()

    return app


def _seeded(params: p.GenerateParams, index: int) -> p.GenerateParams:
    """Choice ``index`` of several: its own seed, so the choices differ yet repeat."""
    if index == 0 or params.seed is None:
        return params
    return msgspec.structs.replace(params, seed=params.seed + index)


async def _launch_on_start(bridge: BrokerBridge, names: list[str]) -> None:
    """Launch ``names`` (built-in names or GGUF paths) once a worker has joined."""
    for name in names:
        while True:
            reply = await bridge.call(lambda rid: p.ClusterInfo(rid), timeout=5)
            if isinstance(reply, p.Cluster) and reply.workers:
                break
            await asyncio.sleep(0.2)
        path = name if name.endswith(".gguf") else None
        model_name = name.rsplit("/", 1)[-1].removesuffix(".gguf")

        def launch(rid: str, name: str = model_name, path: str | None = path) -> p.Message:
            return p.LaunchModel(rid, name, "", path)

        launched = await bridge.call(launch, timeout=None)
        if isinstance(launched, p.ModelInfo):
            log.warning("model %r is ready as %r", name, launched.model_uid)
        else:
            log.error("could not launch %r: %s", name, getattr(launched, "message", launched))
