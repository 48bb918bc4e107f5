"""The OpenAI-compatible REST facade; it reaches the broker only through the protocol."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from xb.api import errors, inference, management, middleware, registrations, usage, xinference
from xb.api.auth import APIKeys
from xb.api.bridge import BrokerBridge
from xb.api.context import Facade
from xb.api.errors import APIError
from xb.api.launching import launch_message
from xb.api.limits import Limits
from xb.api.metrics import Metrics
from xb.api.schemas import LaunchRequest
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bridge.start()
        starter = asyncio.create_task(
            _launch_on_start(bridge, shared.registry, launch_on_start or [])
        )
        try:
            yield
        finally:
            starter.cancel()
            await bridge.close()

    shared = Facade(
        bridge=bridge,
        registry=Registry(xb_home()),
        metrics=Metrics(),
        limits=limits or Limits(),
        api_keys=api_keys or APIKeys(),
    )
    app = FastAPI(title="xb", version=__version__, lifespan=lifespan)
    app.state.facade = shared
    app.include_router(management.router)
    app.include_router(registrations.router)
    app.include_router(xinference.router)
    app.include_router(inference.router)
    app.include_router(usage.router)
    errors.install(app)
    middleware.install(app, cors_origins or [], shared.api_keys)

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return APIError(405, f"{request.method} is not allowed on {request.url.path}").response()

    return app


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
