"""The arena: two or three chat panes side by side, one prompt sent to all of them."""

from __future__ import annotations

import contextlib
import time
from contextlib import aclosing
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Markdown, Select, Static
from textual.worker import Worker

from xb.client import AsyncClient, AsyncModelHandle, ClientError
from xb.client.calls import waiting_text

MAX_PANES = 3


class ChatPane(Vertical):
    """One model's side of the arena: its settings, its history and its answers."""

    def __init__(self, client: AsyncClient, index: int) -> None:
        super().__init__(classes="pane", id=f"pane-{index}")
        self.client = client
        self.history: list[dict[str, str]] = []
        self._uids: list[str] = []
        self._chosen: str | None = None
        self._job: Worker[None] | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(classes="pane-head"):
            yield Select[str]([], prompt="pick a model", classes="model")
            yield Button("New…", classes="fresh", tooltip="Launch a fresh model for this pane")
        with Horizontal(classes="settings"):
            # Empty: the answer runs until the model ends it (xb's one default everywhere).
            yield Input("", placeholder="max tokens", classes="max-tokens", type="integer")
            yield Input("0.8", placeholder="temperature", classes="temperature", type="number")
        yield VerticalScroll(classes="log")
        yield Static("", classes="stats")

    @property
    def model(self) -> str | None:
        value = self.query_one(".model", Select).value
        return value if isinstance(value, str) else None

    def on_mount(self) -> None:
        self._show_models()

    def set_models(self, uids: list[str]) -> None:
        if uids != self._uids:
            self._uids = list(uids)
            self._show_models()

    def choose(self, uid: str) -> None:
        self._chosen = uid
        if uid not in self._uids:
            self._uids.append(uid)
        self._show_models()

    def _show_models(self) -> None:
        """Put the known models in the picker, once it exists, keeping the choice."""
        if not self.is_mounted:
            return
        select = self.query_one(".model", Select)
        chosen = self._chosen or self.model
        select.set_options([(uid, uid) for uid in self._uids])
        if chosen in self._uids:
            select.value = chosen
        self._chosen = None

    @property
    def busy(self) -> bool:
        return self._job is not None and self._job.is_running

    def send(self, text: str) -> None:
        log = self.query_one(".log", VerticalScroll)
        if self.model is None:
            self.query_one(".stats", Static).update("[yellow]pick a model first[/yellow]")
            return
        self.stop()
        self.history.append({"role": "user", "content": text})
        log.mount(Static(f"[b]you:[/b] {escape(text)}", classes="user"))
        answer = Markdown("", classes="answer")
        log.mount(answer)
        self._job = self.stream(self.model, answer)

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}
        for name, kind, selector in (
            ("max_tokens", int, ".max-tokens"),
            ("temperature", float, ".temperature"),
        ):
            with contextlib.suppress(ValueError):  # empty or half-typed: the API's default
                config[name] = kind(self.query_one(selector, Input).value)
        return config

    @work(group="pane-stream", exclusive=False)
    async def stream(self, uid: str, answer: Markdown) -> None:
        stats = self.query_one(".stats", Static)
        stats.update("[dim]waiting…[/dim]")
        log = self.query_one(".log", VerticalScroll)
        started = time.perf_counter()
        first = 0.0
        pieces: list[str] = []
        tokens = 0
        writer = Markdown.get_stream(answer)

        def queued(position: int) -> None:  # the broker's word on its place in line
            if not first:
                stats.update(f"[dim]{waiting_text(position)}[/dim]")

        try:
            model = AsyncModelHandle(self.client, uid)  # no describe round trip before the chat
            chunks = await model.chat(
                list(self.history), generate_config=self._config(), on_queued=queued
            )
            # Closed on the way out, stopped or not: that closes the connection, which
            # is what tells xb to stop generating. An abandoned one waits for the GC.
            async with aclosing(chunks):
                async for chunk in chunks:
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    for choice in chunk["choices"]:
                        text = choice["delta"].get("content")
                        if text:
                            if not first:
                                first = time.perf_counter()
                                stats.update("")  # no longer waiting
                            pieces.append(text)
                            await writer.write(text)
                            log.scroll_end(animate=False)
        except ClientError as exc:
            stats.update(f"[red]{exc}[/red]")
            return
        finally:
            await writer.stop()
            if pieces:
                self.history.append({"role": "assistant", "content": "".join(pieces)})
        stats.update(_stats(started, first, time.perf_counter(), tokens))

    def stop(self) -> None:
        if self.busy and self._job is not None:
            self._job.cancel()
            self.query_one(".stats", Static).update("[yellow]stopped[/yellow]")

    def clear(self) -> None:
        self.stop()
        self.history.clear()
        self.query_one(".log", VerticalScroll).remove_children()
        self.query_one(".stats", Static).update("")


def _stats(started: float, first: float, ended: float, tokens: int) -> str:
    if not first:
        return "no text"
    rate = (tokens - 1) / (ended - first) if tokens > 1 and ended > first else 0.0
    return f"first token {(first - started) * 1000:.0f} ms · {rate:.0f} tok/s · {tokens} tokens"


class ArenaScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "stop", "Stop", tooltip="stop generating"),
        Binding("ctrl+l", "clear", "Clear", tooltip="clear every pane's history"),
        Binding("ctrl+n", "add_pane", "Add pane", tooltip="add a pane (up to three)"),
        Binding("ctrl+w", "remove_pane", "Remove pane", tooltip="remove the last pane"),
    ]

    def __init__(self, client: AsyncClient) -> None:
        super().__init__()
        self.client = client
        self.models: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="panes"):
            yield ChatPane(self.client, 0)
            yield ChatPane(self.client, 1)
        yield Input(placeholder="message every pane · enter sends", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "xb · arena"
        self.set_interval(2.0, self.refresh_models)
        self.refresh_models()
        self.query_one("#prompt", Input).focus()

    @property
    def panes(self) -> list[ChatPane]:
        return list(self.query(ChatPane))

    @work(exclusive=True, group="arena-models")
    async def refresh_models(self) -> None:
        try:
            models = await self.client.list_models()
        except ClientError:
            return
        self.models = [
            uid for uid, m in models.items() if "chat" in m["abilities"] or not m["abilities"]
        ]
        for pane in self.panes:
            pane.set_models(self.models)

    @on(Input.Submitted, "#prompt")
    def prompt(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        event.input.value = ""
        for pane in self.panes:
            pane.send(text)

    @on(Button.Pressed, ".fresh")
    def fresh(self, event: Button.Pressed) -> None:
        pane = event.button.ancestors_with_self
        target = next(p for p in pane if isinstance(p, ChatPane))
        from xb.tui.launch import LaunchScreen

        def launched(uid: str | None) -> None:
            if uid is not None:
                self.models.append(uid)
                target.choose(uid)

        self.app.push_screen(LaunchScreen(self.client, fresh_uid=True), launched)

    def use_model(self, uid: str, pane: int = 0) -> None:
        self.panes[pane].choose(uid)

    def action_stop(self) -> None:
        for pane in self.panes:
            pane.stop()

    def action_clear(self) -> None:
        for pane in self.panes:
            pane.clear()

    def action_add_pane(self) -> None:
        panes = self.panes
        if len(panes) >= MAX_PANES:
            self.notify(f"at most {MAX_PANES} panes")
            return
        pane = ChatPane(self.client, len(panes))
        self.query_one("#panes", Horizontal).mount(pane)
        self.call_after_refresh(pane.set_models, self.models)

    def action_remove_pane(self) -> None:
        panes = self.panes
        if len(panes) > 1:
            panes[-1].stop()
            panes[-1].remove()
