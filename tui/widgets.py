"""Small pieces the screens share: a confirmation, the help, memory bars."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Markdown

from xb.core.units import GIB

HELP = """\
# xb dashboard

| key | where | what |
|---|---|---|
| `c` | anywhere | the cluster: workers and models |
| `l` | anywhere | launch a model |
| `a` | anywhere | the arena: chat with two or three models at once |
| `?` | anywhere | this help |
| `ctrl+p` | anywhere | the command palette |
| `t` | cluster | terminate the selected model (asks first) |
| `enter` | cluster | chat with the selected model in the arena |
| `enter` | arena prompt | send the message to every pane |
| `escape` | arena | stop generating |
| `ctrl+l` | arena | clear every pane's history |
| `ctrl+n` / `ctrl+w` | arena | add a pane (up to three) / remove the last |
| `q` | anywhere | quit |
"""


def memory_bar(free: int, total: int, width: int = 10) -> str:
    """Used memory as a bar, with free/total in GiB: ``▮▮▮▯▯▯ 3.1/8.0 GiB free``."""
    used = 0.0 if total <= 0 else 1 - free / total
    filled = round(used * width)
    return f"{'▮' * filled}{'▯' * (width - filled)} {free / GIB:.1f}/{total / GIB:.1f}"


class ConfirmScreen(ModalScreen[bool]):
    """Ask a yes/no question; dismisses with the answer."""

    BINDINGS = [("escape", "dismiss(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Grid(id="confirm"):
            yield Label(self.question, id="question")
            yield Button("Yes", variant="error", id="yes")
            yield Button("No", variant="primary", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class HelpScreen(ModalScreen[None]):
    BINDINGS = [("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Markdown(HELP)
            yield Button("Close", id="close")

    def on_button_pressed(self) -> None:
        self.dismiss()
