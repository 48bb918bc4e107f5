"""SVG snapshots of each screen at a fixed terminal size (pytest-textual-snapshot).

The data comes from FakeClient so that every run draws the same picture. Update them
after a deliberate change with: pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Markdown, Static

from tests.tui.fake import FakeClient
from xb.tui.app import XbApp

pytestmark = pytest.mark.unit
SIZE = (100, 30)


def app() -> XbApp:
    return XbApp(client=FakeClient())  # type: ignore[arg-type]


async def settle(pilot: Pilot[Any], check: Any) -> None:
    for _ in range(100):
        if check():
            break
        await pilot.pause(0.05)
    await pilot.pause(0.1)


def test_cluster_screen(snap_compare: Any) -> None:
    async def ready(pilot: Pilot[Any]) -> None:
        table = pilot.app.screen.query_one("#models", DataTable)
        tenants = pilot.app.screen.query_one("#tenants", DataTable)
        await settle(pilot, lambda: table.row_count == 2 and tenants.row_count == 2)

    assert snap_compare(app(), terminal_size=SIZE, run_before=ready)


def test_launch_screen(snap_compare: Any) -> None:
    async def ready(pilot: Pilot[Any]) -> None:
        await pilot.press("l")
        await settle(
            pilot,
            lambda: (
                pilot.app.screen.query("#families")
                and pilot.app.screen.query_one("#families").option_count == 2
            ),
        )
        await pilot.press("tab", "down")
        await pilot.pause(0.2)

    assert snap_compare(app(), terminal_size=SIZE, run_before=ready)


async def arena_of_two(pilot: Pilot[Any]) -> XbApp:
    """The arena open, its two panes on the two fake models, its cursor still."""
    xb = pilot.app
    assert isinstance(xb, XbApp)
    await pilot.press("a")
    await settle(pilot, lambda: len(xb.arena.models) == 2)
    xb.arena.panes[0].choose("qwen2.5-instruct")
    xb.arena.panes[1].choose("llama-3.2-instruct")
    # A blinking cursor would make the picture vary.
    xb.arena.query_one("#prompt", Input).cursor_blink = False
    return xb


def test_arena_screen(snap_compare: Any) -> None:
    async def ready(pilot: Pilot[Any]) -> None:
        xb = await arena_of_two(pilot)
        prompt = xb.arena.query_one("#prompt", Input)
        prompt.value = "Tell me about the sea"
        prompt.focus()
        await pilot.press("enter")
        await settle(
            pilot,
            lambda: all(
                "tokens" in str(p.query_one(".stats", Static).render()) for p in xb.arena.panes
            ),
        )
        for pane in xb.arena.panes:  # timings vary from run to run: pin them for the picture
            pane.query_one(".stats", Static).update("first token 21 ms · 310 tok/s · 9 tokens")
        assert all(m.source for p in xb.arena.panes for m in p.query(Markdown))
        await pilot.pause(0.2)

    assert snap_compare(app(), terminal_size=SIZE, run_before=ready)


def test_arena_at_80_by_24(snap_compare: Any) -> None:
    async def ready(pilot: Pilot[Any]) -> None:
        await arena_of_two(pilot)
        await pilot.pause(0.2)

    assert snap_compare(app(), terminal_size=(80, 24), run_before=ready)


def test_help_screen(snap_compare: Any) -> None:
    assert snap_compare(app(), terminal_size=SIZE, press=["question_mark"])
