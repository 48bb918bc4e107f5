"""The OpenAI-compatible REST facade; it reaches the broker only through the protocol."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from xb import __version__
from xb import protocol as p
from xb.api import errors
from xb.api.bridge import BrokerBridge, new_request_id
from xb.api.errors import APIError
from xb.api.schemas import (
    UNSUPPORTED,
    ChatCompletionRequest,
    CompletionRequest,
    LaunchRequest,
    SamplingParams,
)
from xb.settings import HEARTBEAT_INTERVAL

log = logging.getLogger("xb.api")

LLAMA_TEMPERATURE, LLAMA_TOP_P = 0.8, 0.95  # llama.cpp's defaults, which its users expect
_json = msgspec.json.Encoder()


def _fail(message: p.Message) -> APIError:
    if isinstance(message, p.Error):
        return APIError.from_code(message.code, message.message)
    return APIError(
        500, f"unexpected {type(message).__name__} from the broker", type="server_error"
    )


def _check_supported(body: SamplingParams) -> None:
    extra = body.model_extra or {}
    for name, value in extra.items():
        if name in UNSUPPORTED:
            if value in (None, False, UNSUPPORTED[name]) or value == {"type": "text"}:
                continue
            raise APIError(
                400,
                f"parameter '{name}' is not supported yet",
                param=name,
                code="unsupported_parameter",
            )
        log.info("ignoring unknown request field %r", name)
    if body.n != 1:
        raise APIError(400, "only n=1 is supported", param="n", code="unsupported_parameter")


def _params(body: SamplingParams, **fields: Any) -> p.GenerateParams:
    _check_supported(body)
    return p.GenerateParams(
        max_tokens=fields.pop("max_tokens", None) or body.max_tokens,
        temperature=LLAMA_TEMPERATURE if body.temperature is None else body.temperature,
        top_p=LLAMA_TOP_P if body.top_p is None else body.top_p,
        stop=body.stop_list(),
        seed=body.seed,
        **fields,
    )


def _model_entry(info: p.ModelInfo) -> dict[str, Any]:
    """One model as both the OpenAI model object and Xinference's description."""
    return {
        "id": info.model_uid,
        "object": "model",
        "created": info.created,
        "owned_by": "xb",
        "model_uid": info.model_uid,
        "model_name": info.model_name,
        "model_type": "LLM",
        "model_format": info.model_format,
        "model_path": info.model_path,
        "n_ctx": info.n_ctx,
        "abilities": info.abilities,
        "replica": info.replica,
        "replicas": msgspec.to_builtins(info.replicas),
        "queued": info.queued,
    }


def create_app(
    broker_address: str,
    *,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    launch_on_start: list[str] | None = None,
) -> FastAPI:
    bridge = BrokerBridge(broker_address, heartbeat_interval=heartbeat_interval)

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

    async def call(make: Any, timeout: float | None = 30.0) -> p.Message:
        return await bridge.call(make, timeout)

    # ---- health and cluster -----------------------------------------------------------

    @app.get("/health")
    async def health() -> JSONResponse:
        if not bridge.up:
            raise APIError(503, "the broker is not answering", type="server_error")
        return JSONResponse({"status": "ok", "version": __version__})

    @app.get("/v1/cluster/info")
    async def cluster_info() -> Response:
        reply = await call(lambda rid: p.ClusterInfo(rid))
        if not isinstance(reply, p.Cluster):
            raise _fail(reply)
        return Response(_json.encode(reply.workers), media_type="application/json")

    # ---- management -------------------------------------------------------------------

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        reply = await call(lambda rid: p.ListModels(rid))
        if not isinstance(reply, p.ModelList):
            raise _fail(reply)
        return JSONResponse({"object": "list", "data": [_model_entry(m) for m in reply.models]})

    @app.post("/v1/models")
    async def launch_model(body: LaunchRequest) -> JSONResponse:
        if body.model_extra:
            log.info("ignoring unknown launch fields %s", sorted(body.model_extra))
        reply = await call(
            lambda rid: p.LaunchModel(
                request_id=rid,
                model_name=body.model_name,
                model_uid=body.model_uid or "",
                model_path=body.model_path,
                replica=body.replica,
                n_ctx=body.n_ctx,
                worker=body.worker,
            ),
            timeout=None,  # loading takes as long as it takes; a dead broker still ends it
        )
        if isinstance(reply, p.Error) and reply.code == p.ErrorCode.MODEL_FAILED:
            raise APIError(400, reply.message, code=reply.code.value)  # the file was the problem
        if not isinstance(reply, p.ModelInfo):
            raise _fail(reply)
        return JSONResponse({"model_uid": reply.model_uid})

    @app.get("/v1/models/{model_uid}")
    async def describe_model(model_uid: str) -> JSONResponse:
        reply = await call(lambda rid: p.DescribeModel(rid, model_uid))
        if not isinstance(reply, p.ModelInfo):
            raise _fail(reply)
        return JSONResponse(_model_entry(reply))

    @app.delete("/v1/models/{model_uid}")
    async def terminate_model(model_uid: str) -> JSONResponse:
        reply = await call(lambda rid: p.TerminateModel(rid, model_uid))
        if not isinstance(reply, p.Ack):
            raise _fail(reply)
        return JSONResponse({"model_uid": model_uid, "terminated": True})

    # ---- inference --------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        messages = [p.ChatMessage(m.role, m.text()) for m in body.messages]
        params = _params(
            body, messages=messages, max_tokens=body.max_completion_tokens or body.max_tokens
        )
        submit = p.Submit(new_request_id(), body.model, "chat", params)
        return await _run(bridge, submit, body.stream, _ChatShape(body.model, submit.request_id))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Response:
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(
                    400,
                    "only one prompt per request is supported",
                    param="prompt",
                    code="unsupported_parameter",
                )
            prompt = prompt[0]
        submit = p.Submit(new_request_id(), body.model, "completion", _params(body, prompt=prompt))
        return await _run(bridge, submit, body.stream, _TextShape(body.model, submit.request_id))

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return APIError(405, f"{request.method} is not allowed on {request.url.path}").response()

    return app


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


class _ChatShape:
    """Builds chat.completion objects and chunks."""

    def __init__(self, model: str, request_id: str) -> None:
        self.model, self.id, self.created = model, f"chatcmpl-{request_id}", int(time.time())

    def chunk(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text:
            delta["content"] = text
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def whole(self, text: str, final: p.Final) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": final.finish_reason,
                }
            ],
            "usage": msgspec.to_builtins(final.usage),
        }


class _TextShape:
    """Builds text_completion objects and chunks."""

    def __init__(self, model: str, request_id: str) -> None:
        self.model, self.id, self.created = model, f"cmpl-{request_id}", int(time.time())

    def chunk(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            ],
        }

    def whole(self, text: str, final: p.Final) -> dict[str, Any]:
        body = self.chunk(text, final.finish_reason)
        body["usage"] = msgspec.to_builtins(final.usage)
        return body


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + _json.encode(payload) + b"\n\n"


async def _run(
    bridge: BrokerBridge, submit: p.Submit, stream: bool, shape: _ChatShape | _TextShape
) -> Response:
    frames = bridge.stream(submit)
    first = await anext(frames)
    if isinstance(first, p.Error):  # nothing sent yet: answer with a proper status
        await frames.aclose()
        raise _fail(first)
    if not stream:
        parts: list[str] = []
        message: p.Message = first
        try:
            while True:
                if isinstance(message, p.Partial):
                    parts.append(message.text)
                elif isinstance(message, p.Final):
                    parts.append(message.text)
                    return JSONResponse(shape.whole("".join(parts), message))
                else:
                    raise _fail(message)
                message = await anext(frames)
        finally:
            await frames.aclose()

    async def events() -> AsyncIterator[bytes]:
        message: p.Message = first
        head = True
        try:
            while True:
                if isinstance(message, p.Partial):
                    yield _sse(shape.chunk(message.text, None, first=head))
                    head = False
                elif isinstance(message, p.Final):
                    if message.text or head:
                        yield _sse(shape.chunk(message.text, None, first=head))
                    yield _sse(shape.chunk(None, message.finish_reason))
                    yield b"data: [DONE]\n\n"
                    return
                else:  # a failure mid-stream: an SSE event with an error object
                    yield _sse(_fail(message).body())
                    yield b"data: [DONE]\n\n"
                    return
                message = await anext(frames)
        finally:
            await frames.aclose()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
