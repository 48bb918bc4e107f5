"""The dashboard driven with Textual's pilot against a real stack on generated models."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Markdown, Static

from tests.stack import Stack
from xb.tui.app import XbApp
from xb.tui.arena import ChatPane
from xb.tui.launch import LaunchScreen

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]
SIZE = (120, 36)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def wait_for(pilot: Pilot[Any], check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await pilot.pause(0.05)
    raise AssertionError(f"not true within {timeout} s: {check}")


def rows(app: XbApp, table: str) -> list[str]:
    return [str(k.value) for k in app.cluster.query_one(table, DataTable).rows]


@pytest.fixture(scope="module")
def stack(module_stack: Stack, tiny_model: Path, endless_model: Path) -> Stack:
    module_stack.launch(model_name="tiny", model_path=str(tiny_model), n_ctx=1024)
    module_stack.launch(model_name="endless", model_path=str(endless_model), n_ctx=4096)
    return module_stack


async def test_cluster_shows_workers_and_models(stack: Stack) -> None:
    app = XbApp(stack.url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: {"tiny", "endless"} <= set(rows(app, "#models")))
        assert rows(app, "#workers") == [w["worker_id"] for w in stack.cluster()]
        table = app.cluster.query_one("#models", DataTable)
        assert table.get_cell("tiny", "State") == "ready"
        assert table.get_cell("tiny", "Replicas") == "1/1"


async def test_cluster_shows_who_uses_what(stack: Stack) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "user": "erin",
    }
    reply = httpx.post(f"{stack.url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    tokens = reply.json()["usage"]["total_tokens"]
    app = XbApp(stack.url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "erin\ntiny" in rows(app, "#tenants"))
        table = app.cluster.query_one("#tenants", DataTable)
        assert table.get_row("erin\ntiny") == ["erin", "tiny", "0", "0", "1", str(tokens)]


async def test_launch_from_the_dashboard(stack: Stack, tiny_model: Path) -> None:
    app = XbApp(stack.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("l")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen)
        await wait_for(pilot, lambda: screen.families)  # the registry is listed
        screen.query_one("#path", Input).value = str(tiny_model)
        await pilot.click("#go")
        await wait_for(pilot, lambda: not isinstance(app.screen, LaunchScreen))  # it is ready
        await wait_for(pilot, lambda: "tiny-1" in rows(app, "#models"))
    assert httpx.delete(f"{stack.url}/v1/models/tiny-1").status_code == 200


async def test_a_refused_launch_shows_the_reason(stack: Stack) -> None:
    app = XbApp(stack.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("l")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen) and app.screen)
        screen.query_one("#path", Input).value = "/nowhere/model.gguf"
        await pilot.click("#go")
        status = screen.query_one("#launch-status", Static)
        await wait_for(pilot, lambda: "does not exist" in str(status.render()))


async def send(pilot: Pilot[Any], app: XbApp, text: str) -> None:
    prompt = app.arena.query_one("#prompt", Input)
    prompt.value = text
    prompt.focus()
    await pilot.press("enter")


def answered(pane: ChatPane) -> bool:
    answers = list(pane.query(Markdown))
    stats = str(pane.query_one(".stats", Static).render())
    return bool(answers) and "tokens" in stats and bool(answers[-1].source)


@pytest.mark.parametrize("panes", [2, 3])
async def test_arena_streams_into_every_pane(stack: Stack, panes: int) -> None:
    app = XbApp(stack.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("a")
        if panes == 3:
            await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: len(app.arena.panes) == panes)
        await wait_for(pilot, lambda: "tiny" in app.arena.models)
        for pane in app.arena.panes:
            pane.choose("tiny")
            pane.query_one(".max-tokens", Input).value = "12"
        await send(pilot, app, "Hello models")
        await wait_for(pilot, lambda: all(answered(p) for p in app.arena.panes))
        for pane in app.arena.panes:
            assert "12 tokens" in str(pane.query_one(".stats", Static).render())
            assert [m["role"] for m in pane.history] == ["user", "assistant"]
        # Clearing resets every pane's history.
        await pilot.press("ctrl+l")
        await wait_for(
            pilot, lambda: all(not p.history and not p.query(Markdown) for p in app.arena.panes)
        )


async def test_escape_stops_generation(stack: Stack) -> None:
    app = XbApp(stack.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("a")
        await wait_for(pilot, lambda: "endless" in app.arena.models)
        pane = app.arena.panes[0]
        pane.choose("endless")
        pane.query_one(".max-tokens", Input).value = "4000"
        app.arena.panes[1].remove()
        await send(pilot, app, "go on forever")
        await wait_for(pilot, lambda: any(m.source for m in pane.query(Markdown)))
        await pilot.press("escape")
        await wait_for(pilot, lambda: "stopped" in str(pane.query_one(".stats", Static).render()))

        def idle() -> bool:
            return stack.in_flight() == 0

        await wait_for(pilot, idle, timeout=3)  # the worker stopped generating


async def test_a_pane_that_waits_shows_its_place_in_line(stack: Stack, endless_model: Path) -> None:
    # One slot: the first pane's answer holds it, the second's waits.
    body = {"model_path": str(endless_model), "n_ctx": 4096, "n_parallel": 1}
    stack.launch(model_name="endless", model_uid="one-slot", **body)
    app = XbApp(stack.url)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("a")
            await wait_for(pilot, lambda: "one-slot" in app.arena.models)
            holder, waiting = app.arena.panes
            for pane, tokens in ((holder, "4000"), (waiting, "12")):
                pane.choose("one-slot")
                pane.query_one(".max-tokens", Input).value = tokens
            holder.send("go on forever")
            await wait_for(pilot, lambda: any(m.source for m in holder.query(Markdown)))
            waiting.send("and you?")
            stats = waiting.query_one(".stats", Static)
            await wait_for(pilot, lambda: "waiting (1st in line)" in str(stats.render()))
            holder.stop()  # its slot frees: the waiting pane's answer comes
            await wait_for(pilot, lambda: answered(waiting))
            assert "12 tokens" in str(stats.render())
    finally:
        assert httpx.delete(f"{stack.url}/v1/models/one-slot", timeout=30).status_code == 200


async def test_terminate_from_the_cluster_screen(stack: Stack, tiny_model: Path) -> None:
    stack.launch(model_name="tiny", model_path=str(tiny_model), model_uid="doomed")
    app = XbApp(stack.url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "doomed" in rows(app, "#models"))
        table = app.cluster.query_one("#models", DataTable)
        table.move_cursor(row=table.get_row_index("doomed"))
        table.focus()
        await pilot.press("t")
        await wait_for(pilot, lambda: app.screen.query("#yes"))
        await pilot.click("#yes")
        await wait_for(pilot, lambda: "doomed" not in rows(app, "#models"))
    assert httpx.get(f"{stack.url}/v1/models/doomed").status_code == 404
