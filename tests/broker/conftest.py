from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.recorder import Recorder


@pytest.fixture
def rec(tmp_path: Path) -> Iterator[Recorder]:
    """A broker driven in-process, with its state file in ``tmp_path``."""
    recorder = Recorder(tmp_path / "broker.db")
    yield recorder
    recorder.broker.close()
