"""The backend seam: what a model process needs from an inference engine."""

from __future__ import annotations

import codecs
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from xb.core.errors import XbError
from xb.core.protocol import GenerateParams, TokenLogprob, ToolCall, Usage


class BackendError(XbError):
    """A request this model cannot run (a prompt longer than its context, say)."""


@dataclass(frozen=True)
class Piece:
    """Text of one generated token; empty while it may still be the start of a stop word."""

    text: str
    logprob: TokenLogprob | None = None


@dataclass(frozen=True)
class Done:
    finish_reason: str
    usage: Usage
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    embeddings: tuple[list[float], ...] = ()
    preemptions: int = 0  # times it left its slot for an interactive request


class Backend(ABC):
    """One loaded model. ``generate`` yields a ``Piece`` per token, then one ``Done``."""

    abilities: tuple[str, ...] = ("generate",)

    @abstractmethod
    def generate(self, kind: str, params: GenerateParams) -> Iterator[Piece | Done]: ...

    def share(self, threads: int) -> None:
        """Use at most ``threads`` CPU threads from now on (the worker's share for it).
        By default the threads stay as loaded (chatglm.cpp picks its own)."""
        return None


def token_budget(n_prompt: int, n_ctx: int, max_tokens: int | None) -> int:
    """How many tokens may follow a prompt of ``n_prompt``; a prompt that fills the
    context is the caller's mistake."""
    room = n_ctx - n_prompt
    if room <= 0:
        raise BackendError(
            f"the prompt is {n_prompt} tokens and the model's context is {n_ctx}; "
            "shorten the prompt or launch the model with a larger n_ctx"
        )
    return room if max_tokens is None else min(max_tokens, room)


class StopText:
    """Turns decoded token bytes into text, holding back what may begin a stop string."""

    def __init__(self, stop: list[str]) -> None:
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Text that is now safe to emit; sets ``stopped`` when a stop string appears."""
        self._pending += self._decoder.decode(data)
        for s in self._stop:
            at = self._pending.find(s)
            if at >= 0:
                self.stopped = True
                out, self._pending = self._pending[:at], ""
                return out
        if self._hold == 0:
            out, self._pending = self._pending, ""
            return out
        keep = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self._pending)), 0, -1):
                if self._pending.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        cut = len(self._pending) - keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        """What is held back when generation ends without a stop string."""
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return "" if self.stopped else out
