"""The help screen is written from the screens' BINDINGS, so it cannot fall behind them."""

from __future__ import annotations

from typing import ClassVar

import pytest
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Markdown

from tests.tui.fake import FakeClient
from xb.tui.app import XbApp
from xb.tui.arena import ArenaScreen
from xb.tui.cluster import ClusterScreen
from xb.tui.launch import LaunchScreen
from xb.tui.widgets import HelpScreen, help_text

pytestmark = [pytest.mark.unit, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Extra(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("x", "x", "X", tooltip="a new key"),
        Binding("y", "y", "Y"),
        ("ctrl+e,question_mark", "e", "E"),
        Binding("z", "z"),  # no description: nothing to say in the help
    ]


def test_a_new_binding_is_in_the_help_with_its_tooltip_or_description() -> None:
    text = help_text([("extra", Extra)], [("ctrl+p", "anywhere", "the palette")])
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows == [
        "| `x` | extra | a new key |",
        "| `y` | extra | Y |",
        "| `ctrl+e` | extra | E |",
        "| `?` | extra | E |",
        "| `ctrl+p` | anywhere | the palette |",
    ]


async def test_the_help_lists_every_binding_of_every_screen() -> None:
    app = XbApp(client=FakeClient())  # type: ignore[arg-type]
    async with app.run_test(size=(100, 60)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        source = app.screen.query_one(Markdown).source
    for node in (XbApp, ClusterScreen, LaunchScreen, ArenaScreen):
        for binding in Binding.make_bindings(node.BINDINGS):
            assert f"| {binding.tooltip} |" in source, binding
    assert "| `ctrl+p` | anywhere | the command palette |" in source
