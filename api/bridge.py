"""The facade's one connection to the broker: a DEALER socket read by one asyncio task.

Replies are routed to waiters by request id. A ping every heartbeat interval tells
whether the broker is alive; when it misses ``HEARTBEAT_LIVENESS`` intervals every
waiter gets a BROKER_UNAVAILABLE error, so no HTTP request hangs on a dead broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

import zmq
import zmq.asyncio

from xb.core import protocol as p
from xb.core.keys import PeerKeys
from xb.core.settings import HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS
from xb.core.transport import configure_peer

log = logging.getLogger("xb.api")

Reply = p.Message
# Frames one request may have waiting for its reader (one more: the error that ends it).
# A stream's frames come at most about 100 a second, so a reader this far behind has
# stopped reading for seconds (README, "Limits").
MAX_PENDING_FRAMES = 1024


def new_request_id() -> str:
    return uuid.uuid4().hex


class BrokerBridge:
    def __init__(
        self,
        address: str,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        keys: PeerKeys | None = None,
    ) -> None:
        self.address = address
        self.interval = heartbeat_interval
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        configure_peer(self._sock, keys)
        self._waiters: dict[str, asyncio.Queue[Reply]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._last_seen = time.monotonic()
        self.answered = False  # the broker has sent something since the facade started
        self._instance = ""  # the broker's, from its pongs
        self.stats = p.BrokerStats()  # the broker's counters, from its latest pong

    def _unavailable(self, request_id: str) -> p.Error:
        return p.Error(
            request_id,
            p.ErrorCode.BROKER_UNAVAILABLE,
            f"the broker at {self.address} cannot be reached",
        )

    def _fail_all(self, reason: str) -> None:
        for rid, queue in list(self._waiters.items()):
            self._deliver(queue, p.Error(rid, p.ErrorCode.BROKER_UNAVAILABLE, reason))

    def _deliver(self, queue: asyncio.Queue[Reply], message: Reply) -> None:
        """Queue ``message`` for its waiter. A waiter ``MAX_PENDING_FRAMES`` behind has
        stopped reading (a stream whose client does not read): its request is cancelled,
        and the last place in its queue says so."""
        if queue.qsize() < MAX_PENDING_FRAMES:
            queue.put_nowait(message)
            return
        rid = getattr(message, "request_id", "")
        if self._waiters.pop(rid, None) is None:
            return  # cancelled already
        self._send(p.Cancel(rid))
        text = f"the client fell {MAX_PENDING_FRAMES} frames behind; the request was cancelled"
        queue.put_nowait(p.Error(rid, p.ErrorCode.CANCELLED, text))

    @property
    def up(self) -> bool:
        return time.monotonic() - self._last_seen <= self.interval * HEARTBEAT_LIVENESS

    async def start(self) -> None:
        self._sock.connect(self.address)
        self._last_seen = time.monotonic()
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._ping())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._sock.close(linger=0)
        self._ctx.term()

    def _send(self, message: p.Message) -> bool:
        """Queue the frames without waiting (cleanup code may call it); False when there is
        no connection to the broker, or its queue is full."""
        sent = self._sock.send_multipart(p.encode(message), zmq.NOBLOCK)
        assert isinstance(sent, asyncio.Future)  # with NOBLOCK it is settled already
        return not (sent.done() and sent.exception() is not None)

    async def _read(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            self._last_seen = time.monotonic()
            self.answered = True
            message = p.decode_or_drop(frames, log, "broker")
            if message is None:
                continue
            if isinstance(message, p.Pong) and message.instance:
                if self._instance and message.instance != self._instance:
                    self._fail_all("the broker restarted; requests it was running are lost")
                self._instance = message.instance
                self.stats = message.stats or self.stats
            queue = self._waiters.get(getattr(message, "request_id", ""))
            if queue is not None:
                self._deliver(queue, message)

    async def _ping(self) -> None:
        was_up = True
        while True:
            self._send(p.Ping())
            await asyncio.sleep(self.interval)
            if not self.up:
                if was_up:
                    log.warning("broker %s is not answering", self.address)
                self._fail_all(f"the broker at {self.address} is not answering")
            was_up = self.up

    async def call(self, make: Callable[[str], p.Message], timeout: float | None = 30.0) -> Reply:
        """Send the management message ``make(request_id)`` and wait for its one reply."""
        rid = new_request_id()
        queue: asyncio.Queue[Reply] = asyncio.Queue(MAX_PENDING_FRAMES + 1)
        self._waiters[rid] = queue
        try:
            if not self._send(make(rid)):
                return self._unavailable(rid)
            try:
                return await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                return p.Error(
                    rid,
                    p.ErrorCode.BROKER_UNAVAILABLE,
                    f"the broker did not answer within {timeout:.0f} s",
                )
        finally:
            del self._waiters[rid]

    def open(self, submit: p.Submit) -> RequestStream:
        """Submit a request; its PARTIAL, FINAL or ERROR frames arrive on the stream (and
        QUEUED ones while it waits, if ``submit.positions`` asks for them)."""
        queue: asyncio.Queue[Reply] = asyncio.Queue(MAX_PENDING_FRAMES + 1)
        self._waiters[submit.request_id] = queue
        if not self._send(submit):
            queue.put_nowait(self._unavailable(submit.request_id))
        return RequestStream(self, submit.request_id, queue, submit.positions)

    def _release(self, request_id: str, cancel: bool) -> None:
        self._waiters.pop(request_id, None)
        if cancel:
            self._send(p.Cancel(request_id))


class RequestStream:
    """The frames of one submitted request. Closing it before its end cancels the request."""

    def __init__(
        self,
        bridge: BrokerBridge,
        request_id: str,
        queue: asyncio.Queue[Reply],
        positions: bool = False,
    ) -> None:
        self.request_id = request_id
        self.positions = positions  # QUEUED frames are handed on, not skipped
        self._bridge = bridge
        self._queue = queue
        self.finished = False
        self._closed = False
        self._partials = 0  # PARTIAL frames received

    async def next(
        self, timeout: float | None = None
    ) -> p.Partial | p.Final | p.Error | p.Queued | None:
        """The next frame, or None when ``timeout`` passes first."""
        while True:
            try:
                message = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                return None
            lost = (isinstance(message, p.Partial) and message.index != self._partials) or (
                isinstance(message, p.Final) and message.partials not in (-1, self._partials)
            )
            if lost:
                # Part of the answer went missing between the model and here: say so,
                # rather than hand on text with a hole in it. Closing cancels the rest.
                return p.Error(
                    self.request_id,
                    p.ErrorCode.WORKER_LOST,
                    "part of this answer was lost on the way from the worker (its "
                    "connection broke); retry the request",
                )
            if isinstance(message, p.Final | p.Error):
                self.finished = True
                return message
            if isinstance(message, p.Partial):
                self._partials += 1
                return message
            if isinstance(message, p.Queued) and self.positions:
                return message

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bridge._release(self.request_id, cancel=not self.finished)
