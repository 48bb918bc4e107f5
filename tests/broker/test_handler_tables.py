"""Every wire command has its place: one the broker handles, or one it never receives. A
command added to the protocol's ``Message`` union fails here until it is given one."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from xb.broker.handlers import NOT_FOR_THE_BROKER, Handlers
from xb.core import protocol as p

pytestmark = pytest.mark.unit


def test_every_wire_command_is_handled_or_not_for_the_broker(tmp_path: Path) -> None:
    handlers = Handlers(state=tmp_path / "broker.db")
    try:
        handled = handlers.handled()
    finally:
        handlers.close()
    union = set(get_args(p.Message))
    assert handled <= union, f"tables hold types off the wire: {handled - union}"
    assert not handled & NOT_FOR_THE_BROKER, handled & NOT_FOR_THE_BROKER
    homeless = union - handled - NOT_FOR_THE_BROKER
    assert not homeless, f"no handler table takes {sorted(t.__name__ for t in homeless)}"
