"""Small pieces the screens share: a confirmation, the help, memory bars."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.dom import DOMNode
from textual.keys import key_to_character
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Markdown

from xb.core.units import GIB

# A key that is no binding of a screen: (key, where, what).
HelpRow = tuple[str, str, str]


def key_text(key: str) -> str:
    """A binding's key as typed: ``?`` for question_mark, ``ctrl+l`` as it is."""
    character = key_to_character(key)
    return character if character and character.isprintable() else key


def help_text(sections: Iterable[tuple[str, type[DOMNode]]], extra: Iterable[HelpRow]) -> str:
    """The help as a Markdown table, a row per binding of each ``(where, class)`` section.

    A row says the binding's ``tooltip``, else its ``description``; bindings without either
    (and Textual's system ones) are left out. ``extra`` adds keys that are no binding.
    """
    rows: list[HelpRow] = []
    for where, node in sections:
        for binding in Binding.make_bindings(node.BINDINGS):
            what = binding.tooltip or binding.description
            if what and not binding.system:
                rows.append((binding.key_display or key_text(binding.key), where, what))
    rows.extend(extra)
    lines = ["# xb dashboard", "", "| key | where | what |", "|---|---|---|"]
    lines += [f"| `{key}` | {where} | {what} |" for key, where, what in rows]
    return "\n".join(lines) + "\n"


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
    """The keys, as ``help_text`` writes them."""

    BINDINGS = [("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Markdown(self.text)
            yield Button("Close", id="close")

    def on_button_pressed(self) -> None:
        self.dismiss()
