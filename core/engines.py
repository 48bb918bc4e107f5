"""The engines xb runs models on, in one table: what each is called, which files it reads,
whether it batches and shares the worker's threads, how much memory a replica needs, and
how the worker starts it. Nothing outside this module tests a format or an engine name.

A launch picks its engine (``choose``): the one that reads ``model_format``, else the one
whose file suffix the path has, else the one named by ``model_engine``, else llama.cpp; an
engine named must be the one the format or suffix picks.
``ModelSpec.engine`` carries the choice to the broker and the worker; a spec from an
earlier version, without one, runs on the engine of its format (``of_spec``). The demo
model is a GGUF file that llama.cpp runs: it has no engine of its own.

A new engine is one ``register`` call (tests/test_engines.py adds a throwaway one): the
facade accepts its name and formats, the broker estimates and places it, and the worker
starts it through ``start``, a ``"module:function"`` path it imports (core cannot import
the worker), called as ``function(path, spec, threads)`` and returning the worker's
``Engine``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xb.core.errors import XbError
from xb.core.modelfile import estimate_memory, read_gguf_info
from xb.core.protocol import ModelSpec

_MIB = 1024 * 1024


class EngineError(XbError):
    """An engine or format xb does not run, or an engine that cannot read the format;
    ``param`` is the launch field to blame."""

    def __init__(self, message: str, param: str = "model_engine") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class EngineKind:
    name: str  # as users and Xinference name it
    aliases: frozenset[str]  # other spellings a launch may use, lower case
    formats: tuple[str, ...]  # the file formats it reads; the first is the canonical name
    suffixes: tuple[str, ...]  # file name endings that pick it when nothing else does
    batches: bool  # several chat sequences per replica (continuous batching)
    alone: str  # why a replica decodes one sequence at a time, when it does not batch
    shares_threads: bool  # runs on the worker's CPU threads, which it shares among them
    tools: bool  # calls tools and follows JSON schemas (through a grammar)
    estimate: Callable[[Path, ModelSpec], int]  # bytes one replica needs, from its file
    start: str  # "module:function" the worker calls to load a replica
    drafts_with_model: bool = False  # takes a draft model (``draft_model``) beside the model

    def names(self) -> frozenset[str]:
        return self.aliases | {self.name.lower()}


def _gguf_need(path: Path, spec: ModelSpec) -> int:
    return estimate_memory(read_gguf_info(path), spec.n_ctx, spec.n_parallel)


def _size_need(path: Path, spec: ModelSpec) -> int:
    """The weights as the file holds them, a fifth more for buffers, and the runtime."""
    return int(path.stat().st_size * 1.2) + 64 * _MIB


ENGINES: dict[str, EngineKind] = {}  # by name, in the order registered: the first is default


def register(kind: EngineKind) -> None:
    taken = {name for other in ENGINES.values() for name in other.names()}
    formats = {fmt for other in ENGINES.values() for fmt in other.formats}
    if kind.names() & taken or set(kind.formats) & formats:
        raise EngineError(f"engine {kind.name!r} reuses a name or format another engine has")
    ENGINES[kind.name] = kind


def unregister(name: str) -> None:
    ENGINES.pop(name, None)


register(
    EngineKind(
        name="llama.cpp",
        aliases=frozenset({"llama-cpp", "llama_cpp", "llama-cpp-python"}),
        formats=("gguf", "ggufv2"),
        suffixes=(".gguf",),
        batches=True,
        alone="",
        shares_threads=True,
        tools=True,
        estimate=_gguf_need,
        start="xb.worker.llama_engine:start",
        drafts_with_model=True,
    )
)
register(
    EngineKind(
        name="chatglm.cpp",
        aliases=frozenset({"chatglm-cpp", "chatglm_cpp"}),
        formats=("ggml", "ggmlv3"),
        suffixes=(".bin",),
        batches=False,
        alone="chatglm.cpp decodes one sequence at a time",
        shares_threads=False,
        tools=False,
        estimate=_size_need,
        start="xb.worker.chatglm_backend:start",
    )
)


def _listed() -> str:
    return ", ".join(ENGINES)


def named(name: str) -> EngineKind:
    """The engine called ``name`` (or one of its aliases)."""
    for kind in ENGINES.values():
        if name.lower() in kind.names():
            return kind
    raise EngineError(f"model_engine {name!r} is not available; xb runs {_listed()}")


def reading(fmt: str) -> EngineKind:
    """The engine that reads files of format ``fmt`` (any of its spellings)."""
    for kind in ENGINES.values():
        if fmt.lower() in kind.formats:
            return kind
    known = ", ".join(f"{k.formats[0]} ({k.name})" for k in ENGINES.values())
    raise EngineError(f"model_format {fmt!r} is not served; use {known}", "model_format")


def file_format(fmt: str) -> str | None:
    """The canonical name of format ``fmt`` ("ggufv2" is "gguf"); None if none reads it."""
    try:
        return reading(fmt).formats[0]
    except EngineError:
        return None


def choose(engine: str | None, fmt: str | None, path: str | None) -> tuple[EngineKind, str]:
    """The engine and canonical format of a launch; ``EngineError`` says what clashes.

    The file's format is the one given, else the one its suffix says; the engine named
    must read it. With neither, the engine named runs, else the first registered."""
    kind = named(engine) if engine is not None else None
    by_file = reading(fmt) if fmt is not None else None
    if by_file is None and path:
        by_file = next((k for k in ENGINES.values() if path.lower().endswith(k.suffixes)), None)
    if kind is not None and by_file is not None and kind is not by_file:
        raise EngineError(
            f"model_engine {engine!r} cannot run {by_file.formats[0]} models; xb runs them "
            f"on {by_file.name}"
        )
    kind = kind or by_file or next(iter(ENGINES.values()))
    return kind, kind.formats[0]


def of_spec(spec: ModelSpec) -> EngineKind:
    """The engine a spec runs on: the one chosen at launch, or the one of its format."""
    return named(spec.engine) if spec.engine else reading(spec.model_format)


def of_model(engine: str, fmt: str) -> EngineKind | None:
    """The engine of a running model as described (``ModelInfo``), None if unknown here."""
    try:
        return named(engine) if engine else reading(fmt)
    except EngineError:
        return None
