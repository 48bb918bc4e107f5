"""``xb``: the client's commands, with ``xb tui`` to open the dashboard."""

from __future__ import annotations

import functools

import typer

from xb.client.cli import build as client_commands
from xb.tui.cli import tui


@functools.cache
def build() -> typer.Typer:
    """The whole ``xb`` command: the client's commands and the dashboard."""
    app = client_commands()
    app.command()(tui)
    return app


def main() -> None:
    build()()
