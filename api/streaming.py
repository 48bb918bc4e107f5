"""Running generations for the facade: fan-out over choices, whole answers and SSE streams."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

import msgspec
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from xb.api import convert
from xb.api.bridge import BrokerBridge, RequestStream
from xb.api.errors import APIError
from xb.api.limits import Limits, answer_timeout_error, check_frame
from xb.api.metrics import Metrics
from xb.core import protocol as p
from xb.core.errors import XbError

# Seconds without a frame before the SSE stream gets a keep-alive comment; also how long
# the facade waits for the first frame before it commits to a 200 and starts streaming.
KEEPALIVE_SECONDS = float(os.environ.get("XB_SSE_KEEPALIVE_S", "5"))
DISCONNECT_POLL_SECONDS = 0.25
MERGED_FRAMES = 16  # frames of a stream's choices waiting to be written, at most
log = logging.getLogger("xb.api")
_json = msgspec.json.Encoder()


def fail(message: p.Message) -> APIError:
    if isinstance(message, p.Error):
        return APIError.from_code(message.code, message.message, retry_after=message.retry_after)
    return APIError(
        500, f"unexpected {type(message).__name__} from the broker", type="server_error"
    )


def sse(payload: object) -> bytes:
    return b"data: " + _json.encode(payload) + b"\n\n"


def queued_comment(position: int) -> bytes:
    """The SSE comment that tells a waiting stream its place in line (clients that do not
    look for it skip comments)."""
    return b": queued, position %d\n\n" % position


# What a choice's stream hands on: QUEUED only to a stream, before its first token.
Frame = p.Partial | p.Final | p.Error | p.Queued


@dataclass
class Choice:
    """What one choice has produced so far."""

    stream: RequestStream
    text: list[str] = field(default_factory=list)
    logprobs: list[p.TokenLogprob] = field(default_factory=list)
    final: p.Final | None = None
    first_at: float = 0.0


@dataclass
class Generation:
    bridge: BrokerBridge
    submits: list[p.Submit]
    shape: convert.Shape
    metrics: Metrics
    endpoint: str
    prompt_counted: list[bool] | None = None
    include_usage: bool = False
    request: Request | None = None  # the HTTP request, to notice a client that goes away
    limits: Limits = field(default_factory=Limits)
    started: float = field(default_factory=time.perf_counter)
    _recorded: bool = False

    @property
    def model(self) -> str:
        return self.submits[0].model_uid

    def _record(self, status: int, choices: list[Choice]) -> None:
        """Count the request once, with how it ended (499: the client went away)."""
        if self._recorded:
            return
        self._recorded = True
        self.metrics.request(self.model, self.endpoint, status)
        for choice in choices:
            if choice.final is None or not choice.first_at:
                continue
            usage = choice.final.usage
            tokens = usage.completion_tokens
            self.metrics.tokens(self.model, usage.prompt_tokens, tokens, usage.cached_tokens)
            accepted, rejected = usage.accepted_prediction_tokens, usage.rejected_prediction_tokens
            self.metrics.drafts(self.model, accepted, rejected)
            self.metrics.ttft(self.model, choice.first_at - self.started)
            if tokens > 1:
                per_token = (time.perf_counter() - choice.first_at) / (tokens - 1)
                self.metrics.per_token(self.model, per_token)

    async def respond(self, stream: bool) -> Response:
        if stream:  # a stream shows its place in line while it waits: ask the broker
            self.submits = [msgspec.structs.replace(s, positions=True) for s in self.submits]
        for submit in self.submits:
            check_frame(submit)
        choices = [Choice(self.bridge.open(s)) for s in self.submits]
        if not stream:
            try:
                return await self._whole_within_deadline(choices)
            finally:
                self._close(choices)
        try:
            early = await self._first_frames(choices, KEEPALIVE_SECONDS)
        except BaseException:
            self._close(choices)
            raise
        events = self._events(choices, early)

        def ended() -> None:
            # Starlette abandons the generator when the client goes away; it would only be
            # finalised when collected. Cancel the generation now instead.
            self._close(choices)
            self._record(499, choices)

        who = f"model {self.model!r}, tenant {self.submits[0].tenant!r}"
        return _SSEResponse(events, ended, self.limits.write_timeout, who)

    async def _whole_within_deadline(self, choices: list[Choice]) -> Response:
        """The whole answer, or a 504 once ``answer_timeout`` has passed (the caller's
        closing of the choices then cancels them)."""
        seconds = self.limits.answer_timeout
        try:
            async with asyncio.timeout(seconds):
                early = await self._first_frames(choices, None)
                return await self._whole_unless_gone(choices, early)
        except TimeoutError:
            self._record(504, choices)
            raise answer_timeout_error(seconds) from None

    async def _first_frames(
        self, choices: list[Choice], timeout: float | None
    ) -> list[tuple[int, Frame]]:
        """Wait (up to ``timeout``) for each choice's first frame; an early error is raised
        as an HTTP error, since no byte of the response has been sent. A choice that waits
        in line ends the wait: the stream starts, to show the place."""
        deadline = None if timeout is None else time.monotonic() + timeout
        early: list[tuple[int, Frame]] = []
        for index, choice in enumerate(choices):
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            message = await choice.stream.next(left)
            if message is None:
                break
            if isinstance(message, p.Error):
                self.metrics.request(self.model, self.endpoint, fail(message).status)
                raise fail(message)
            early.append((index, message))
            if isinstance(message, p.Queued):
                break
        return early

    def _take(
        self, choice: Choice, message: p.Partial | p.Final, keep: bool = True
    ) -> tuple[str, list[p.TokenLogprob]]:
        """Note ``message`` for its choice; ``keep`` its text and logprobs for a whole
        answer (a stream hands them on instead: keeping them would hold the whole answer,
        tens of MB with logprobs, for as long as the stream lasts)."""
        if not choice.first_at:
            choice.first_at = time.perf_counter()
        if keep:
            choice.text.append(message.text)
            choice.logprobs += message.logprobs
        if isinstance(message, p.Final):
            choice.final = message
        return message.text, list(message.logprobs)

    async def _whole_unless_gone(
        self, choices: list[Choice], early: list[tuple[int, Frame]]
    ) -> Response:
        """The whole answer; or, if the client goes away first, stop generating it."""
        if self.request is None:
            return await self._whole(choices, early)
        whole = asyncio.create_task(self._whole(choices, early))
        gone = asyncio.create_task(self._client_gone(self.request))
        try:
            await asyncio.wait({whole, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # a deadline cancels this wait: the tasks go with it
            gone.cancel()
            if not whole.done():
                whole.cancel()
        if whole.done() and not whole.cancelled():
            return whole.result()
        self._record(499, choices)
        return Response(status_code=499)  # nobody reads it; closing the choices cancels

    @staticmethod
    async def _client_gone(request: Request) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)

    async def _whole(self, choices: list[Choice], early: list[tuple[int, Frame]]) -> Response:
        pending = list(early)
        for index, choice in enumerate(choices):
            while choice.final is None:
                if pending and pending[0][0] == index:
                    message: p.Message | None = pending.pop(0)[1]
                else:
                    message = await choice.stream.next()
                if not isinstance(message, p.Partial | p.Final):
                    error = fail(message) if message is not None else APIError(500, "no reply")
                    self._record(error.status, choices)
                    raise error
                self._take(choice, message)
        finals = [c.final for c in choices if c.final is not None]
        parts = [("".join(c.text), c.logprobs, f) for c, f in zip(choices, finals, strict=True)]
        self._record(200, choices)
        body = self.shape.whole(parts, convert.usage(finals, self.prompt_counted))
        return JSONResponse(body)

    async def _events(
        self, choices: list[Choice], early: list[tuple[int, Frame]]
    ) -> AsyncGenerator[bytes, None]:
        # Bounded: while the client reads slowly the readers wait here, and the frames
        # wait in the bridge, which cancels a request that falls too far behind.
        merged: asyncio.Queue[tuple[int, Frame]] = asyncio.Queue(len(choices) + MERGED_FRAMES)
        for item in early:
            merged.put_nowait(item)
        # Each reader carries on after the frame its choice already gave (a finished one stops).
        readers = [asyncio.create_task(self._read(i, c, merged)) for i, c in enumerate(choices)]
        status = 200
        places: dict[int, int] = {}  # each waiting choice's place in line, before any token
        shown = 0
        try:
            open_choices = len(choices)
            while open_choices:
                try:
                    index, message = await asyncio.wait_for(merged.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                choice = choices[index]
                if isinstance(message, p.Queued):
                    if not any(c.first_at for c in choices):
                        places[index] = message.position
                        if min(places.values()) != shown:
                            shown = min(places.values())
                            yield queued_comment(shown)
                    continue
                if isinstance(message, p.Error):
                    error = fail(message)
                    status = error.status
                    yield sse(error.body())
                    break
                first = not choice.first_at
                text, lp = self._take(choice, message, keep=False)
                final = message if isinstance(message, p.Final) else None
                if first or text or lp or final is not None:
                    yield sse(self.shape.chunk(index, first, text, lp, None))
                if final is not None:
                    yield sse(self.shape.chunk(index, False, "", [], final))
                    open_choices -= 1
            else:
                if self.include_usage:
                    finals = [c.final for c in choices if c.final is not None]
                    yield sse(self.shape.usage_chunk(convert.usage(finals, self.prompt_counted)))
            yield b"data: [DONE]\n\n"
            self._record(status, choices)
        finally:
            for task in readers:
                task.cancel()
            self._close(choices)

    @staticmethod
    async def _read(
        index: int,
        choice: Choice,
        merged: asyncio.Queue[tuple[int, Frame]],
    ) -> None:
        while not choice.stream.finished:
            message = await choice.stream.next()
            if message is not None:
                await merged.put((index, message))

    @staticmethod
    def _close(choices: list[Choice]) -> None:
        for choice in choices:
            choice.stream.close()


class _Stalled(XbError):
    """The client left a write unread for longer than the write timeout."""


class _SSEResponse(StreamingResponse):
    """A server-sent event stream that runs ``ended`` however it ends, and ends when its
    client stops reading: a write the client leaves unread for ``write_timeout`` seconds
    (the server's buffer for the connection is full) cancels the stream."""

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        ended: Callable[[], None],
        write_timeout: float,
        who: str = "",
    ) -> None:
        """``who``: the model and tenant, for the log (a tenant's name, never its key)."""
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._events = events
        self._ended = ended
        self._write_timeout = write_timeout
        self._who = who

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def bounded(message: Message) -> None:
            try:
                async with asyncio.timeout(self._write_timeout):
                    await send(message)
            except TimeoutError:
                raise _Stalled from None

        try:
            await super().__call__(scope, receive, bounded)
        except _Stalled:
            # The answer cannot be completed; returning without it makes the server close
            # the connection.
            log.warning(
                "a stream's client read nothing for %g s; the stream was cancelled (%s)",
                self._write_timeout,
                self._who,
            )
        finally:
            self._ended()
            await self._events.aclose()  # its readers stop now, not when it is collected
