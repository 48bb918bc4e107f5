"""The engine seam: how a model process advances the requests it holds.

A model process hands each request to its engine and calls ``step`` while the engine is
busy; every step returns what each request produced: a ``Piece`` per token, then one
``Done`` or ``Failed``. ``BatchEngine`` (llama.cpp) decodes many sequences per step;
``SequentialEngine`` runs an iterator ``Backend`` (chatglm.cpp, embeddings) one request
at a time, one item per step, so cancellation is noticed between tokens.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from xb.core.protocol import GenerateParams, Priority
from xb.worker.backend import Backend, BackendError, Done, Piece

log = logging.getLogger("xb.model")


@dataclass(frozen=True)
class Failed:
    """A request that ended in error: ``invalid`` is the caller's mistake, ``failed`` ours."""

    message: str
    invalid: bool = True


Event = tuple[str, Piece | Done | Failed]


class Engine(ABC):
    abilities: tuple[str, ...] = ("generate",)
    slots: int = 1  # requests that make progress together; more wait inside the engine

    @abstractmethod
    def add(
        self,
        request_id: str,
        kind: str,
        params: GenerateParams,
        priority: Priority = "interactive",
        tenant: str = "",
    ) -> None:
        """Take a request; raises ``BackendError`` when it cannot run at all. An engine
        that runs one request at a time serves them in order, whatever their priority."""

    @abstractmethod
    def cancel(self, request_id: str) -> bool:
        """End a request and free its slot (its cells may stay cached); False when it is
        not here."""

    @abstractmethod
    def step(self) -> list[Event]:
        """Advance every running request by (at most) one token."""

    @property
    @abstractmethod
    def busy(self) -> bool:
        """Whether ``step`` has work to do."""

    @property
    def cached_tokens(self) -> int:
        """Tokens of finished requests kept for reuse by later ones."""
        return 0

    def share(self, threads: int) -> None:
        """Use at most ``threads`` CPU threads from the next step on."""
        return None


class SequentialEngine(Engine):
    """One request at a time, over a backend that yields a request's items in turn."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.abilities = backend.abilities
        self._waiting: deque[tuple[str, str, GenerateParams]] = deque()
        self._current: tuple[str, Iterator[Piece | Done]] | None = None

    def add(
        self,
        request_id: str,
        kind: str,
        params: GenerateParams,
        priority: Priority = "interactive",
        tenant: str = "",
    ) -> None:
        self._waiting.append((request_id, kind, params))

    def cancel(self, request_id: str) -> bool:
        if self._current is not None and self._current[0] == request_id:
            self._current = None
            return True
        for entry in self._waiting:
            if entry[0] == request_id:
                self._waiting.remove(entry)
                return True
        return False

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._waiting)

    def share(self, threads: int) -> None:
        self._backend.share(threads)

    def step(self) -> list[Event]:
        if self._current is None:
            if not self._waiting:
                return []
            request_id, kind, params = self._waiting.popleft()
            self._current = (request_id, self._backend.generate(kind, params))
        request_id, items = self._current
        try:
            item = next(items)
        except StopIteration:
            self._current = None
            return [(request_id, Failed("the model ended without an answer", invalid=False))]
        except BackendError as exc:
            self._current = None
            return [(request_id, Failed(str(exc)))]
        except Exception as exc:  # native code raising on a request it cannot handle
            log.exception("generation failed")
            self._current = None
            return [(request_id, Failed(f"generation failed: {exc}", invalid=False))]
        if isinstance(item, Done):
            self._current = None
        return [(request_id, item)]
