"""One model replica in its own process: load the model, then run requests one at a time.

Run as ``python -m xb.worker.model_process ADDRESS REPLICA_ID SPEC_JSON OFFER``, where
OFFER is the bytes of memory the worker offers it (0: whatever the machine has free). A crash or
abort in native inference code ends this process, not the worker that started it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from pathlib import Path

import msgspec
import psutil
import zmq

from xb import protocol as p
from xb.demo_model import DEMO_MODEL_NAME, ensure_demo_model
from xb.modelfile import ModelFileError, estimate_memory, read_gguf_info
from xb.settings import xb_home
from xb.units import size_text
from xb.worker.backend import Backend, BackendError, Done
from xb.worker.download import DownloadError, Report, fetch

log = logging.getLogger("xb.model")

# Later tokens are coalesced into one frame per this many seconds; the first goes at once.
COALESCE_SECONDS = float(os.environ.get("XB_COALESCE_MS", "10")) / 1000


class LoadError(Exception):
    """The model cannot be loaded here; the message says why and what to do."""


def resolve_path(spec: p.ModelSpec, report: Report) -> Path:
    """The model file on this machine: given, fetched from the hub, or the demo model."""
    if spec.model_path:
        return Path(spec.model_path).expanduser()
    if spec.download is not None:
        try:
            return fetch(spec.download, xb_home(), report)
        except DownloadError as exc:
            raise LoadError(str(exc)) from exc
    if spec.model_name == DEMO_MODEL_NAME:
        return ensure_demo_model(xb_home())
    raise LoadError(f"model {spec.model_name!r} names no file; give model_path")


def _need(spec: p.ModelSpec, path: Path) -> int:
    if not path.is_file():
        raise LoadError(f"model file {str(path)!r} does not exist on this worker")
    if spec.model_format == "gguf":
        try:
            return estimate_memory(read_gguf_info(path), spec.n_ctx)
        except ModelFileError as exc:
            raise LoadError(str(exc)) from exc
    return int(path.stat().st_size * 1.2) + 64 * 1024 * 1024  # ggml: weights and buffers


def load_backend(spec: p.ModelSpec, offer: int, report: Report) -> Backend:
    """Fetch if need be, check the memory the worker offers, and load."""
    if spec.model_format not in ("gguf", "ggml"):
        raise LoadError(f"model format {spec.model_format!r} is not supported; use gguf or ggml")
    path = resolve_path(spec, report)
    report(p.Progress("loading"))
    need = _need(spec, path)
    # The worker's offer already weighs its memory limit, or the GPU the model offloads to.
    free = offer or int(psutil.virtual_memory().available)
    if need > free:
        raise LoadError(
            f"model {spec.model_uid!r} needs {size_text(need)} and this worker has "
            f"{size_text(free)} free; terminate a model or use another worker"
        )
    if spec.model_format == "ggml":
        from xb.worker.chatglm_backend import ChatGLMBackend

        return ChatGLMBackend(path, spec)
    from xb.worker.llama_backend import LlamaBackend

    return LlamaBackend(path, spec)


class Runner:
    """Receives REQUEST and CANCEL frames and answers with PARTIAL, FINAL or ERROR."""

    def __init__(self, sock: zmq.Socket[bytes], backend: Backend) -> None:
        self._sock = sock
        self._backend = backend
        self._queue: deque[p.Request] = deque()
        self._cancelled: set[str] = set()
        self._parent = os.getppid()
        self._next_parent_check = 0.0

    def _send(self, message: p.Message) -> None:
        self._sock.send_multipart(p.encode(message))

    def _drain(self, timeout_ms: int) -> None:
        if self._sock.poll(timeout_ms):
            while True:
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(frames)
        now = time.monotonic()
        if now >= self._next_parent_check:
            self._next_parent_check = now + 1.0
            if os.getppid() != self._parent:  # the worker is gone: nobody will read our output
                log.warning("worker process went away; exiting")
                os._exit(0)

    def _handle(self, frames: list[bytes]) -> None:
        try:
            message = p.decode(frames)
        except p.ProtocolError as exc:
            log.warning("dropped malformed frame from worker: %s", exc)
            return
        if isinstance(message, p.Request):
            self._queue.append(message)
        elif isinstance(message, p.Cancel):
            queued = [r for r in self._queue if r.request_id == message.request_id]
            for request in queued:
                self._queue.remove(request)
                self._send(p.Error(request.request_id, p.ErrorCode.CANCELLED, "cancelled"))
            if not queued:
                self._cancelled.add(message.request_id)

    def run(self) -> None:
        while True:
            if not self._queue:
                self._drain(1000)
                continue
            self._execute(self._queue.popleft())

    def _execute(self, request: p.Request) -> None:
        rid = request.request_id
        self._cancelled.discard(rid)
        text: list[str] = []
        logprobs: list[p.TokenLogprob] = []
        tokens = 0
        sent_first = False
        last_sent = time.monotonic()
        try:
            for item in self._backend.generate(request.kind, request.params):
                if isinstance(item, Done):
                    self._send(
                        p.Final(
                            rid,
                            item.finish_reason,
                            item.usage,
                            "".join(text) + item.text,
                            logprobs,
                            list(item.tool_calls),
                            list(item.embeddings),
                        )
                    )
                    return
                text.append(item.text)
                if item.logprob is not None:
                    logprobs.append(item.logprob)
                tokens += 1
                now = time.monotonic()
                if (not sent_first and item.text) or now - last_sent >= COALESCE_SECONDS:
                    self._send(p.Partial(rid, "".join(text), tokens, logprobs))
                    text, logprobs, tokens = [], [], 0
                    sent_first, last_sent = True, now
                self._drain(0)
                if rid in self._cancelled:
                    self._cancelled.discard(rid)
                    self._send(p.Error(rid, p.ErrorCode.CANCELLED, "cancelled"))
                    return
        except BackendError as exc:
            self._send(p.Error(rid, p.ErrorCode.INVALID_REQUEST, str(exc)))
        except Exception as exc:
            log.exception("generation failed")
            self._send(p.Error(rid, p.ErrorCode.MODEL_FAILED, f"generation failed: {exc}"))


def main(argv: list[str]) -> int:
    address, replica_id, spec_json, offer = argv
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
        )
        sock.send_multipart(p.encode(p.ModelEvent(status)))

    try:
        backend = load_backend(
            spec, int(offer), lambda progress: event(p.ModelState.LOADING, progress=progress)
        )
    except Exception as exc:
        log.warning("load failed: %s", exc)
        reason = str(exc) if isinstance(exc, LoadError | BackendError) else f"load failed: {exc}"
        event(p.ModelState.FAILED, reason)
        sock.close()
        ctx.term()
        return 1
    event(p.ModelState.READY, abilities=backend.abilities)
    Runner(sock, backend).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
