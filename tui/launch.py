"""The launch screen: a family from the registry (or a file), its spec, then live progress."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    Button,
    Footer,
    Header,
    Input,
    Label,
    OptionList,
    ProgressBar,
    Select,
    Static,
)
from textual.widgets.option_list import Option

from xb.client import AsyncClient, ClientError
from xb.client.calls import progress_text


def _size_label(size: str) -> str:
    return size.replace("_", ".") + "B"


class LaunchScreen(Screen[str | None]):
    """Dismisses with the uid of the launched model, or None when the user goes back.

    ``fresh_uid`` gives every launch a new uid, so that two arena panes can run the same
    family independently.
    """

    BINDINGS = [Binding("escape", "back", "Back", tooltip="back, launching nothing")]

    def __init__(self, client: AsyncClient, *, fresh_uid: bool = False) -> None:
        super().__init__()
        self.client = client
        self.fresh_uid = fresh_uid
        self.families: list[dict[str, Any]] = []
        self.family: dict[str, Any] | None = None
        self.launching = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="launch"):
            with Vertical(id="family-column"):
                yield Input(placeholder="type to filter families", id="filter")
                yield OptionList(id="families")
            with VerticalScroll(id="spec-column"):
                yield Label("", id="family-name")
                yield Select[str]([], prompt="format", id="format")
                yield Select[str]([], prompt="size", id="size")
                yield Select[str]([], prompt="quantization", id="quantization")
                with Horizontal(classes="row"):
                    yield Input("1", placeholder="replicas", id="replica", type="integer")
                    yield Input(placeholder="worker (optional)", id="worker")
                yield Input(placeholder="or a model file on the worker (.gguf / .bin)", id="path")
                yield Button("Launch", variant="primary", id="go")
                yield ProgressBar(total=1.0, id="progress", show_eta=False)
                yield Static("", id="launch-status")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "xb · launch"
        self.load_families()
        self.query_one("#filter", Input).focus()

    @work(exclusive=True, group="launch-families")
    async def load_families(self) -> None:
        try:
            self.families = [
                *await self.client.list_model_registrations("LLM"),
                *await self.client.list_model_registrations("embedding"),
            ]
        except ClientError as exc:
            self._status(f"[red]{exc}[/red]")
            return
        self._show_families("")

    def _show_families(self, text: str) -> None:
        options = self.query_one("#families", OptionList)
        options.clear_options()
        for family in self.families:
            name = family["model_name"]
            if text.lower() in name.lower():
                abilities = ", ".join(family["model_ability"])
                options.add_option(Option(f"{name}  [dim]{abilities}[/dim]", id=name))

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self._show_families(event.value)

    @on(OptionList.OptionHighlighted, "#families")
    @on(OptionList.OptionSelected, "#families")
    def family_chosen(self, event: OptionList.OptionHighlighted) -> None:
        name = event.option.id
        self.family = next((f for f in self.families if f["model_name"] == name), None)
        if self.family is None:
            return
        self.query_one("#family-name", Label).update(
            f"[b]{name}[/b] · {', '.join(self.family['model_lang'])} · "
            f"context {self.family['context_length']}"
        )
        self._fill("#format", self.family["model_formats"], str)
        self._fill("#size", self.family["model_sizes_in_billions"], _size_label)
        self._fill("#quantization", self.family["quantizations"], str)

    def _fill(self, selector: str, values: list[str], label: Any) -> None:
        select = self.query_one(selector, Select)
        select.set_options([(label(v), v) for v in values])
        if values:
            select.value = values[0]

    def _status(self, text: str) -> None:
        self.query_one("#launch-status", Static).update(text)

    def _body(self) -> tuple[str, dict[str, Any]]:
        path = self.query_one("#path", Input).value.strip()
        replica = self.query_one("#replica", Input).value.strip() or "1"
        fields: dict[str, Any] = {
            "replica": int(replica),
            "worker": self.query_one("#worker", Input).value.strip() or None,
            "wait_ready": False,
        }
        if path:
            name = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            fields["model_path"] = path
        else:
            if self.family is None:
                raise ValueError("pick a family, or give a model file")
            name = self.family["model_name"]
            for field, selector in (
                ("model_format", "#format"),
                ("model_size_in_billions", "#size"),
                ("quantization", "#quantization"),
            ):
                value = self.query_one(selector, Select).value
                if isinstance(value, str):
                    fields[field] = value
            fields["model_type"] = self.family["model_type"]
        if self.fresh_uid:
            fields["model_uid"] = f"{name}-{uuid.uuid4().hex[:4]}"
        return name, fields

    @on(Button.Pressed, "#go")
    def go(self) -> None:
        if self.launching:
            return
        try:
            name, fields = self._body()
        except ValueError as exc:
            self._status(f"[red]{exc}[/red]")
            return
        self.launch(name, fields)

    @work(exclusive=True, group="launch-run")
    async def launch(self, name: str, fields: dict[str, Any]) -> None:
        self.launching = True
        bar = self.query_one("#progress", ProgressBar)
        bar.update(progress=0)
        try:
            uid = await self.client.launch_model(name, **fields)
            while True:
                state = await self.client.get_launch_model_progress(uid)
                bar.update(progress=state["progress"])
                self._status(progress_text(state))
                if state["stage"] == "ready":
                    self.dismiss(uid)
                    return
                if state["stage"] == "failed":
                    await self.client.terminate_model(uid)
                    self._status(f"[red]launch failed: {state['error']}[/red]")
                    return
                await asyncio.sleep(0.25)
        except ClientError as exc:
            self._status(f"[red]launch refused: {exc}[/red]")
        finally:
            self.launching = False

    def action_back(self) -> None:
        self.dismiss(None)
