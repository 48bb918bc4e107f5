"""The OpenAI-compatible REST facade; it reaches the broker only through the protocol."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from xb.api import convert, errors, management, middleware, registrations, xinference
from xb.api.auth import APIKeys
from xb.api.body import CheckedRoute
from xb.api.bridge import BrokerBridge, new_request_id
from xb.api.conversation import conversation_keys
from xb.api.errors import APIError
from xb.api.launching import launch_message
from xb.api.limits import Limits, answer_timeout_error, check_frame
from xb.api.metrics import Metrics
from xb.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    LaunchRequest,
)
from xb.api.streaming import Generation, fail
from xb.core import __version__
from xb.core import protocol as p
from xb.core.keys import PeerKeys
from xb.core.registry import Registry
from xb.core.settings import HEARTBEAT_INTERVAL, xb_home

log = logging.getLogger("xb.api")


def create_app(
    broker_address: str,
    *,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    launch_on_start: list[str] | None = None,
    cors_origins: list[str] | None = None,
    peer_keys: PeerKeys | None = None,
    api_keys: APIKeys | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """``peer_keys``: the facade's CURVE keys and the broker's public key; None for a broker
    that takes plain peers."""
    bridge = BrokerBridge(broker_address, heartbeat_interval=heartbeat_interval, keys=peer_keys)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bridge.start()
        starter = asyncio.create_task(
            _launch_on_start(bridge, app.state.registry, launch_on_start or [])
        )
        try:
            yield
        finally:
            starter.cancel()
            await bridge.close()

    app = FastAPI(title="xb", version=__version__, lifespan=lifespan)
    app.router.route_class = CheckedRoute
    app.state.bridge = bridge
    app.state.metrics = metrics
    app.state.registry = Registry(xb_home())
    app.state.api_keys = api_keys or APIKeys()
    app.state.limits = limits = limits or Limits()
    app.include_router(management.router)
    app.include_router(registrations.router)
    app.include_router(xinference.router)
    errors.install(app)
    middleware.install(app, cors_origins or [], app.state.api_keys)

    # ---- inference --------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        params = convert.chat_params(body)
        request_id = new_request_id()
        prefix_keys, conversation = conversation_keys(body.model, params.messages or [])
        submits = [
            p.Submit(
                f"{request_id}-{i}",
                body.model,
                "chat",
                _seeded(params, i),
                prefix_keys=prefix_keys,
                conversation=conversation,
            )
            for i in range(body.n)
        ]
        shape = convert.ChatShape(
            body.model, request_id, body.logprobs, legacy_functions=body.functions is not None
        )
        generation = Generation(
            bridge,
            submits,
            shape,
            metrics,
            "chat",
            prompt_counted=[i == 0 for i in range(body.n)],
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            request=request,
            limits=limits,
        )
        return await generation.respond(body.stream)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
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
            request=request,
            limits=limits,
        )
        return await generation.respond(body.stream)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> JSONResponse:
        inputs = convert.embedding_inputs(body)
        submit = p.Submit(
            new_request_id(), body.model, "embedding", p.GenerateParams(inputs=inputs)
        )
        check_frame(submit)
        stream = bridge.open(submit)
        try:
            async with asyncio.timeout(limits.answer_timeout):
                message = await stream.next()
                while isinstance(message, p.Partial):
                    message = await stream.next()
        except TimeoutError:
            metrics.request(body.model, "embeddings", 504)
            raise answer_timeout_error(limits.answer_timeout) from None
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
    seed = (params.seed + index + 2**63) % 2**64 - 2**63  # wraps within 64 bits
    return msgspec.structs.replace(params, seed=seed)


async def _launch_on_start(bridge: BrokerBridge, registry: Registry, names: list[str]) -> None:
    """Launch ``names`` (registry families, 'xb-demo', or model files) once a worker joins."""
    for name in names:
        while True:
            reply = await bridge.call(lambda rid: p.ClusterInfo(rid), timeout=5)
            if isinstance(reply, p.Cluster) and reply.workers:
                break
            await asyncio.sleep(0.2)
        is_file = name.endswith((".gguf", ".bin"))
        body = LaunchRequest.model_validate(
            {
                "model_name": name.rsplit("/", 1)[-1].rsplit(".", 1)[0] if is_file else name,
                "model_path": name if is_file else None,
            }
        )
        try:
            launch = launch_message(body, registry, "")
        except APIError as exc:
            log.error("could not launch %r: %s", name, exc.message)
            continue

        def numbered(rid: str, launch: p.LaunchModel = launch) -> p.Message:
            return msgspec.structs.replace(launch, request_id=rid)

        launched = await bridge.call(numbered, timeout=None)
        if isinstance(launched, p.ModelInfo):
            log.warning("model %r is ready as %r", name, launched.model_uid)
        else:
            log.error("could not launch %r: %s", name, getattr(launched, "message", launched))
