"""Shared fixtures: generated GGUF models and real broker/worker processes on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.stack import Stack
from xb.core.demo_model import DemoModelConfig, write_demo_model


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path) -> Path:
    """64 dims, 2 layers, thousands of tokens per second; never ends an answer by itself,
    so every answer is exactly max_tokens long unless a stop string ends it."""
    return write_demo_model(models_dir / "tiny.gguf", DemoModelConfig(eos_logit=-1000.0))


# A pair with one vocabulary: the draft is the model's first layer alone (the same seed
# writes the same embeddings, output and first layer), and the model's later layers add
# little, so that the draft's greedy choice is the model's about 80% of the time.
SURE = 12.0
DRAFT_PAIR_TARGET = DemoModelConfig(
    n_layer=3, late_layer_scale=0.2, eos_logit=-1000.0, logit_scale=SURE
)
DRAFT_PAIR_DRAFT = DemoModelConfig(n_layer=1, eos_logit=-1000.0, logit_scale=SURE)


@pytest.fixture(scope="session")
def draft_pair(models_dir: Path) -> tuple[Path, Path]:
    """A model and a draft model for it (``DRAFT_PAIR_*``); neither ends an answer."""
    target = write_demo_model(models_dir / "pair-target.gguf", DRAFT_PAIR_TARGET)
    return target, write_demo_model(models_dir / "pair-draft.gguf", DRAFT_PAIR_DRAFT)


@pytest.fixture(scope="session")
def chatglm_model(models_dir: Path) -> Path:
    """A tiny random ChatGLM2 file in chatglm.cpp's own format."""
    from xb.core.chatglm_model import write_chatglm_model

    return write_chatglm_model(models_dir / "chatglm2-tiny.bin")


@pytest.fixture(scope="session")
def endless_model(models_dir: Path) -> Path:
    """Never emits end-of-sequence and is slow enough that a stream lasts seconds."""
    config = DemoModelConfig(n_embd=256, n_layer=6, n_head=4, n_ff=512, eos_logit=-1000.0)
    return write_demo_model(models_dir / "endless.gguf", config)


@pytest.fixture
def make_stack(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[Callable[..., Stack]]:
    """Start a stack with N workers, which may load the files in ``models_dir``; every
    process is killed when the test ends."""
    stacks: list[Stack] = []

    def make(n_workers: int = 1, *broker_args: str, api_key: str | None = None) -> Stack:
        stack = Stack(
            home=tmp_path_factory.mktemp("xbhome"),
            broker_args=list(broker_args),
            model_dirs=[models_dir],
            api_key=api_key,
        )
        stacks.append(stack)
        stack.start()
        for _ in range(n_workers):
            stack.add_worker()
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.stop()


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    """One broker and one worker shared by a module's tests."""
    stack = Stack(home=tmp_path_factory.mktemp("xbhome"), model_dirs=[models_dir])
    with stack.running():
        yield stack


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """llama-cpp-python opens two handles on /dev/null when imported and never closes
    them; close them so the interpreter does not warn at exit."""
    import sys

    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None:
            handle.close()


@pytest.fixture
def tiny_stack(make_stack: Callable[..., Stack], tiny_model: Path) -> Stack:
    """A stack of one worker serving ``tiny_model`` as model ``tiny``."""
    stack = make_stack(1)
    stack.launch(model_name="tiny", model_path=str(tiny_model))
    return stack
