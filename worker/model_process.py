"""One model replica in its own process: load the model, then step its engine.

Run as ``python -m xb.worker.model_process ADDRESS REPLICA_ID SPEC_JSON OFFER THREADS``,
where OFFER is the bytes of memory the worker offers it (0: whatever the machine has free)
and THREADS the CPU threads it may use. A crash or abort in native inference code ends this
process, not the worker that started it.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psutil
import zmq

from xb.core import engines
from xb.core import protocol as p
from xb.core.demo_model import DEMO_MODEL_NAME, ensure_demo_model
from xb.core.engines import EngineError, EngineKind
from xb.core.errors import XbError
from xb.core.lifetime import die_with_parent
from xb.core.modelfile import ModelFileError
from xb.core.paths import PathRefused, allowed_file
from xb.core.settings import xb_home
from xb.core.units import size_text
from xb.worker.backend import BackendError, Done, Piece
from xb.worker.download import DownloadError, Report, fetch
from xb.worker.engine import Engine, Event, Failed

log = logging.getLogger("xb.model")

# Later tokens are coalesced into one frame per this many seconds; the first goes at once.
# With several streams running each waits longer (up to MAX_COALESCE_SECONDS), so the
# replica sends about 100 frames a second in all: every frame costs the worker, broker and
# facade processes CPU and cache that the model's own decoding then lacks (on two cores, 4
# streams decoded 29% faster with 50 ms than with 10 ms between frames).
COALESCE_SECONDS = float(os.environ.get("XB_COALESCE_MS", "10")) / 1000
MAX_COALESCE_SECONDS = 0.05


class LoadError(XbError):
    """The model cannot be loaded here; the message says why and what to do."""


def resolve_path(spec: p.ModelSpec, report: Report) -> Path:
    """The model file on this machine: given, fetched from the hub, or the demo model.
    A given path must lie inside the model folders (``xb.core.paths``), however it is spelled."""
    if spec.model_path:
        try:
            return allowed_file(spec.model_path)
        except PathRefused as exc:
            raise LoadError(str(exc)) from exc
    if spec.download is not None:
        try:
            return fetch(spec.download, xb_home(), report)
        except DownloadError as exc:
            raise LoadError(str(exc)) from exc
    if spec.model_name == DEMO_MODEL_NAME:
        return ensure_demo_model(xb_home())
    raise LoadError(f"model {spec.model_name!r} names no file; give model_path")


def draft_path(spec: p.ModelSpec, report: Report) -> Path | None:
    """The draft model's file on this machine (``speculative: "draft"``): fetched for a
    registry family, else a path that must lie inside the model folders, as the model's."""
    if spec.speculative != "draft":
        return None
    if spec.draft_download is not None:
        try:
            return fetch(spec.draft_download, xb_home(), report)
        except DownloadError as exc:
            raise LoadError(f"the draft model: {exc}") from exc
    if not spec.draft_model:
        raise LoadError("speculative 'draft' needs draft_model, a GGUF file")
    try:
        return allowed_file(spec.draft_model)
    except PathRefused as exc:
        raise LoadError(f"the draft model: {exc}") from exc


def _need(kind: EngineKind, spec: p.ModelSpec, path: Path) -> int:
    if not path.is_file():
        raise LoadError(f"model file {str(path)!r} does not exist on this worker")
    try:
        return kind.estimate(path, spec)
    except (ModelFileError, OSError) as exc:
        raise LoadError(str(exc)) from exc


def load_engine(spec: p.ModelSpec, offer: int, threads: int, report: Report) -> Engine:
    """Fetch if need be, check the memory the worker offers, and start the spec's engine."""
    try:
        kind = engines.of_spec(spec)
    except EngineError as exc:
        raise LoadError(str(exc)) from exc
    path = resolve_path(spec, report)
    draft = draft_path(spec, report)
    report(p.Progress("loading"))
    need = _need(kind, spec, path)
    if draft is not None:  # its weights and its own cells, as many as the model's
        need += _need(kind, spec, draft)
        spec = msgspec.structs.replace(spec, draft_model=str(draft))
    # The worker's offer already weighs its memory limit, or the GPU the model offloads to.
    free = offer or int(psutil.virtual_memory().available)
    if need > free:
        raise LoadError(
            f"model {spec.model_uid!r} needs {size_text(need)} and this worker has "
            f"{size_text(free)} free; terminate a model or use another worker"
        )
    module, _, function = kind.start.partition(":")
    start: Callable[[Path, p.ModelSpec, int], Engine] = getattr(
        importlib.import_module(module), function
    )
    return start(path, spec, threads)


@dataclass
class _Outgoing:
    """What one request has produced since its last PARTIAL frame."""

    last_sent: float
    text: list[str] = field(default_factory=list)
    logprobs: list[p.TokenLogprob] = field(default_factory=list)
    tokens: int = 0
    sent_first: bool = False
    partials: int = 0  # PARTIAL frames sent


class Runner:
    """Receives REQUEST and CANCEL frames, steps the engine, and answers with PARTIAL,
    FINAL or ERROR frames: the first token at once, later ones coalesced."""

    def __init__(self, sock: zmq.Socket[bytes], engine: Engine, report: Callable[[], None]) -> None:
        self._sock = sock
        self._engine = engine
        self._report = report  # sends the replica's status when its cache changed
        self._outgoing: dict[str, _Outgoing] = {}
        self._parent = os.getppid()
        self._next_check = 0.0
        self._cached = engine.cached_tokens

    def _send(self, message: p.Message) -> None:
        frames = p.encode(message)
        size = len(frames[-1])
        if size > p.MAX_BODY_BYTES and isinstance(message, p.Partial | p.Final):
            # The worker would drop a frame this big, and the request would never end (its
            # slot taken for good): end it here with an error that says why.
            self._too_large(message.request_id, size)
            return
        self._sock.send_multipart(frames)

    def _too_large(self, rid: str, size: int) -> None:
        self._outgoing.pop(rid, None)
        self._engine.cancel(rid)  # a partial: the rest of its answer would not fit either
        text = (
            f"the answer takes {size} bytes, more than the {p.MAX_BODY_BYTES} that one protocol "
            "frame carries: send fewer inputs per request (embeddings), or ask for fewer tokens "
            "or logprobs"
        )
        self._sock.send_multipart(p.encode(p.Error(rid, p.ErrorCode.INVALID_REQUEST, text)))

    def run(self) -> None:
        while True:
            self._drain(0 if self._engine.busy else 1000)
            if self._engine.busy:
                try:
                    events = self._engine.step()
                except Exception as exc:  # the engine's state is unknown now: end it all
                    log.exception("the engine failed")
                    for request_id in list(self._outgoing):
                        self._emit(request_id, Failed(f"the model failed: {exc}", invalid=False))
                    raise
                self._deliver(events)
            self._housekeeping()

    def _drain(self, timeout_ms: int) -> None:
        if not self._sock.poll(timeout_ms):
            return
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(frames)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + 1.0
        if os.getppid() != self._parent:  # the worker is gone: nobody will read our output
            log.warning("worker process went away; exiting")
            os._exit(0)
        if self._engine.cached_tokens != self._cached:
            self._cached = self._engine.cached_tokens
            self._report()

    def _handle(self, frames: list[bytes]) -> None:
        message = p.decode_or_drop(frames, log, "worker")
        if message is None:
            return
        if isinstance(message, p.Request):
            rid = message.request_id
            try:
                self._engine.add(
                    rid, message.kind, message.params, message.priority, message.tenant
                )
            except BackendError as exc:
                self._send(p.Error(rid, p.ErrorCode.INVALID_REQUEST, str(exc)))
                return
            except Exception as exc:
                log.exception("could not start a request")
                self._send(p.Error(rid, p.ErrorCode.MODEL_FAILED, f"generation failed: {exc}"))
                return
            self._outgoing[rid] = _Outgoing(time.monotonic())
        elif isinstance(message, p.Share):
            self._engine.share(message.threads)
        elif isinstance(message, p.Cancel) and self._engine.cancel(message.request_id):
            self._outgoing.pop(message.request_id, None)
            self._send(p.Error(message.request_id, p.ErrorCode.CANCELLED, "cancelled"))

    def _deliver(self, events: list[Event]) -> None:
        """Send what a step gave: each request's pieces of the step go in one frame, once
        its wait is over (a step that checks drafts gives a sequence many tokens at once;
        sent as they came, all but the first would wait a step for the next frame)."""
        produced: dict[str, _Outgoing] = {}
        for rid, item in events:
            out = self._outgoing.get(rid)
            if out is None:
                continue
            if not isinstance(item, Piece):
                produced.pop(rid, None)
                self._emit(rid, item)
                continue
            out.text.append(item.text)
            if item.logprob is not None:
                out.logprobs.append(item.logprob)
            out.tokens += 1
            produced[rid] = out
        now = time.monotonic()
        wait = min(COALESCE_SECONDS * len(self._outgoing), MAX_COALESCE_SECONDS)
        for rid, out in produced.items():
            first = not out.sent_first and any(out.text)
            if first or now - out.last_sent >= wait:
                partial = p.Partial(rid, "".join(out.text), out.tokens, out.logprobs, out.partials)
                self._send(partial)
                out.text, out.logprobs, out.tokens = [], [], 0
                out.partials += 1
                out.sent_first, out.last_sent = True, now

    def _emit(self, rid: str, item: Done | Failed) -> None:
        """End a request: its last frame, with what it produced since the one before."""
        out = self._outgoing.get(rid)
        if out is None:
            return
        del self._outgoing[rid]
        if isinstance(item, Done):
            final = p.Final(
                rid,
                item.finish_reason,
                item.usage,
                "".join(out.text) + item.text,
                out.logprobs,
                list(item.tool_calls),
                list(item.embeddings),
                out.partials,
                item.preemptions,
            )
            self._send(final)
        else:
            code = p.ErrorCode.INVALID_REQUEST if item.invalid else p.ErrorCode.MODEL_FAILED
            self._send(p.Error(rid, code, item.message))


def main(argv: list[str]) -> int:
    die_with_parent(signal.SIGKILL)  # it holds nothing that needs cleaning up
    address, replica_id, spec_json, offer, threads = argv
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s model {replica_id} %(message)s")
    spec = msgspec.json.decode(spec_json, type=p.ModelSpec)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.IDENTITY, replica_id.encode())
    sock.connect(address)

    parent = os.getppid()

    def event(
        state: p.ModelState,
        error: str | None = None,
        abilities: tuple[str, ...] = (),
        progress: p.Progress | None = None,
        engine: Engine | None = None,
    ) -> None:
        if os.getppid() != parent:  # the worker is gone, mid-download say: stop here
            os._exit(0)
        status = p.ReplicaStatus(
            replica_id,
            spec.model_uid,
            spec.model_name,
            state,
            error,
            abilities=list(abilities),
            progress=progress,
            slots=engine.slots if engine else 1,
            cached_tokens=engine.cached_tokens if engine else 0,
        )
        sock.send_multipart(p.encode(p.ModelEvent(status)))

    try:
        engine = load_engine(
            spec,
            int(offer),
            int(threads),
            lambda progress: event(p.ModelState.LOADING, progress=progress),
        )
    except Exception as exc:
        log.warning("load failed: %s", exc)
        reason = str(exc) if isinstance(exc, LoadError | BackendError) else f"load failed: {exc}"
        event(p.ModelState.FAILED, reason)
        sock.close()
        ctx.term()
        return 1

    def ready() -> None:
        event(p.ModelState.READY, abilities=engine.abilities, engine=engine)

    ready()
    Runner(sock, engine, ready).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
