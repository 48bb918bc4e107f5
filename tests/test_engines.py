"""The engine table: how a launch picks its engine, and a throwaway engine added by one
``register`` call that the facade, the broker, the registry and the worker all take
without another change."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.recorder import FACADE, Recorder
from xb.api.describe import model_entry
from xb.api.errors import APIError
from xb.api.launching import launch_message
from xb.api.schemas import LaunchRequest
from xb.core import engines
from xb.core import protocol as p
from xb.core.engines import EngineError, EngineKind
from xb.core.paths import allow_folders
from xb.core.registry import Registry, parse_family
from xb.worker.backend import Backend, Done, Piece
from xb.worker.engine import Engine, SequentialEngine
from xb.worker.model_process import load_engine
from xb.worker.server import shares_threads

pytestmark = pytest.mark.unit
NEED = 12_345_678


@pytest.mark.parametrize(
    ("engine", "fmt", "path", "chosen"),
    [
        (None, None, None, ("llama.cpp", "gguf")),
        (None, None, "/m/a.bin", ("chatglm.cpp", "ggml")),
        (None, None, "/m/a.GGUF", ("llama.cpp", "gguf")),
        (None, "ggmlv3", "/m/a.gguf", ("chatglm.cpp", "ggml")),
        ("llama-cpp-python", None, "/m/a", ("llama.cpp", "gguf")),
        ("chatglm_cpp", None, None, ("chatglm.cpp", "ggml")),
        ("chatglm_cpp", "ggml", None, ("chatglm.cpp", "ggml")),
    ],
)
def test_a_launch_picks_engine_then_format_then_suffix(
    engine: str | None, fmt: str | None, path: str | None, chosen: tuple[str, str]
) -> None:
    kind, canonical = engines.choose(engine, fmt, path)
    assert (kind.name, canonical) == chosen


@pytest.mark.parametrize(
    ("engine", "fmt", "path", "param", "says"),
    [
        ("vllm", None, None, "model_engine", "'vllm' is not available; xb runs llama.cpp, chatglm"),
        (None, "pytorch", None, "model_format", "use gguf (llama.cpp), ggml (chatglm.cpp)"),
        ("llama.cpp", "ggml", None, "model_engine", "cannot run ggml models; xb runs them on chat"),
        ("llama.cpp", None, "/m/a.bin", "model_engine", "cannot run ggml models"),
    ],
)
def test_what_no_engine_runs_is_refused_naming_the_field(
    engine: str | None, fmt: str | None, path: str | None, param: str, says: str
) -> None:
    with pytest.raises(EngineError, match=re.escape(says)) as caught:
        engines.choose(engine, fmt, path)
    assert caught.value.param == param


# ---- a throwaway engine ---------------------------------------------------------------


class _Echo(Backend):
    abilities = ("chat",)

    def generate(self, kind: str, params: p.GenerateParams) -> Iterator[Piece | Done]:
        text = params.messages[-1].content if params.messages else ""
        assert isinstance(text, str)
        yield Piece(text)
        yield Done("stop", p.Usage(1, 1, 2), text=text)


def start_echo(path: Path, spec: p.ModelSpec, threads: int) -> Engine:
    return SequentialEngine(_Echo())


@pytest.fixture
def echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The echo engine registered, and a file of its format in an allowed folder."""
    monkeypatch.setenv("XB_MODEL_DIRS", "")
    allow_folders([tmp_path])
    engines.register(
        EngineKind(
            name="echo.cpp",
            aliases=frozenset({"echo"}),
            formats=("echo",),
            suffixes=(".echo",),
            batches=False,
            alone="echo.cpp answers one request at a time",
            shares_threads=False,
            tools=False,
            estimate=lambda path, spec: NEED,
            start=f"{__name__}:start_echo",
        )
    )
    model = tmp_path / "parrot.echo"
    model.write_bytes(b"squawk")
    yield model
    engines.unregister("echo.cpp")


def test_a_registered_engine_runs_through_every_layer(echo: Path, tmp_path: Path) -> None:
    # The facade: the file's suffix picks the engine; its slots follow the table.
    body = LaunchRequest(
        model_name="parrot", model_uid="parrot", model_path=str(echo), wait_ready=False
    )
    launch = launch_message(body, Registry(None), "l")
    assert (launch.spec.engine, launch.spec.model_format, launch.spec.n_parallel) == (
        "echo.cpp",
        "echo",
        1,
    )
    with pytest.raises(APIError, match=re.escape("echo.cpp answers one request at a time")):
        launch_message(body.model_copy(update={"n_parallel": 4}), Registry(None), "l")
    # The broker: its estimate places the replica; the description names the engine.
    rec = Recorder(tmp_path / "broker.db")
    try:
        rec.join("w")
        rec.peer(FACADE, launch)
        (info,) = rec.take(FACADE)
        assert isinstance(info, p.ModelInfo) and info.engine == "echo.cpp"
        assert rec.broker.cluster.models["parrot"].need == NEED
    finally:
        rec.broker.close()
    entry = model_entry(info)
    assert entry["model_engine"] == "echo.cpp" and "tools" not in entry["model_ability"]
    # The registry: a family of the new format validates.
    family = parse_family(
        '{"model_name": "parrot", "model_description": "", "model_lang": ["en"],'
        ' "model_ability": ["chat", "generate"], "context_length": 64, "model_specs":'
        ' [{"model_format": "echo", "model_size_in_billions": "0", "quantizations": ["none"],'
        ' "model_uri": "/m/parrot.echo"}]}'
    )
    assert family.model_specs[0].model_format == "echo"
    # The worker: the engine starts from its dotted path, and answers.
    engine = load_engine(launch.spec, offer=0, threads=1, report=lambda progress: None)
    assert not shares_threads(launch.spec)
    engine.add("r", "chat", p.GenerateParams(messages=[p.ChatMessage("user", "hello")]))
    events = [event for _ in range(2) for event in engine.step()]
    assert [type(item) for _, item in events] == [Piece, Done]


def test_an_engine_cannot_take_another_engines_name_or_format() -> None:
    llama = engines.named("llama.cpp")
    for clash in ({"name": "LLAMA.CPP", "formats": ("x",)}, {"name": "x", "formats": ("ggufv2",)}):
        kind = EngineKind(**{**llama.__dict__, "aliases": frozenset(), **clash})
        with pytest.raises(EngineError, match="reuses a name or format"):
            engines.register(kind)
