"""The OpenAI inference routes: chat, completions and embeddings.

Each converts its request into protocol ``Submit`` messages (``api.convert``), sends them
through the app's bridge and answers whole or as a stream (``api.streaming``). The bridge,
metrics and limits are the app's (``api.context.facade``, set by ``create_app``).

The bodies are dicts built by ``api.convert``; each route documents its body with a model
from ``api.responses`` through ``responses=``, not ``response_model=``: a response model
would have FastAPI validate and re-encode every body, a cost that grows with the body (an
embedding of many inputs is a few hundred thousand floats), for a shape the tests check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypedDict

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.types import DecoratedCallable
from pydantic import BaseModel

from xb.api import convert
from xb.api.auth import INFERENCE, quotas_of, scope, tenant_of
from xb.api.body import CheckedRoute
from xb.api.bridge import new_request_id
from xb.api.context import facade
from xb.api.conversation import conversation_keys
from xb.api.errors import APIError
from xb.api.limits import answer_timeout_error, check_frame
from xb.api.responses import ChatCompletion, Completion, EmbeddingList, documented
from xb.api.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from xb.api.streaming import Generation, fail
from xb.core import protocol as p

router = APIRouter(route_class=CheckedRoute)


def _route(
    path: str, answer: type[BaseModel], *, streams: bool
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """An inference route: the scope, and the body it answers with, for /openapi.json."""
    return router.post(
        path,
        response_model=None,
        responses=documented(answer, streams=streams),
        openapi_extra=scope(INFERENCE),
    )


@_route("/v1/chat/completions", ChatCompletion, streams=True)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    params = convert.chat_params(body)
    request_id = new_request_id()
    prefix_keys, conversation = conversation_keys(body.model, params.messages or [])
    who = sender(request, body)
    submits = [
        p.Submit(
            f"{request_id}-{i}",
            body.model,
            "chat",
            seeded(params, i),
            prefix_keys=prefix_keys,
            conversation=conversation,
            **who,
        )
        for i in range(body.n)
    ]
    shape = convert.ChatShape(
        body.model, request_id, body.logprobs, legacy_functions=body.functions is not None
    )
    counted = [i == 0 for i in range(body.n)]
    return await _generate(request, body, submits, shape, "chat", counted)


@_route("/v1/completions", Completion, streams=True)
async def completions(body: CompletionRequest, request: Request) -> Response:
    request_id = new_request_id()
    submits: list[p.Submit] = []
    counted: list[bool] = []
    who = sender(request, body)
    for prompt in convert.completion_prompts(body):
        params = convert.completion_params(body, prompt)
        for i in range(body.n):
            rid = f"{request_id}-{len(submits)}"
            submits.append(p.Submit(rid, body.model, "completion", seeded(params, i), **who))
            counted.append(i == 0)
    shape = convert.TextShape(body.model, request_id, body.logprobs is not None)
    return await _generate(request, body, submits, shape, "completions", counted)


@_route("/v1/embeddings", EmbeddingList, streams=False)
async def embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
    shared = facade(request)
    metrics, limits = shared.metrics, shared.limits
    inputs = convert.embedding_inputs(body)
    params = p.GenerateParams(inputs=inputs)
    who = sender(request, body)
    submit = p.Submit(new_request_id(), body.model, "embedding", params, **who)
    check_frame(submit)
    stream = shared.bridge.open(submit)
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


async def _generate(
    request: Request,
    body: ChatCompletionRequest | CompletionRequest,
    submits: list[p.Submit],
    shape: convert.Shape,
    endpoint: str,
    counted: list[bool],
) -> Response:
    """Run ``submits`` and answer whole or streamed; ``counted``: which count the prompt
    in usage (the first choice of each prompt)."""
    shared = facade(request)
    generation = Generation(
        shared.bridge,
        submits,
        shape,
        shared.metrics,
        endpoint,
        prompt_counted=counted,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        request=request,
        limits=shared.limits,
    )
    return await generation.respond(body.stream)


class Sender(TypedDict):
    tenant: str
    priority: p.Priority
    weight: float
    rpm: int
    tokens_per_day: int


def sender(
    request: Request, body: ChatCompletionRequest | CompletionRequest | EmbeddingRequest
) -> Sender:
    """The request's tenant, priority and weight (``auth.tenant_of``) and its key's quotas
    (``auth.quotas_of``), as ``Submit``'s keyword arguments."""
    state = request.scope.get("state", {})
    tenant, priority, weight = tenant_of(state, body.user, body.priority)
    rpm, tokens_per_day = quotas_of(state)
    return Sender(
        tenant=tenant, priority=priority, weight=weight, rpm=rpm, tokens_per_day=tokens_per_day
    )


def seeded(params: p.GenerateParams, index: int) -> p.GenerateParams:
    """Choice ``index`` of several: its own seed, so the choices differ yet repeat."""
    if index == 0 or params.seed is None:
        return params
    seed = (params.seed + index + 2**63) % 2**64 - 2**63  # wraps within 64 bits
    return msgspec.structs.replace(params, seed=seed)
