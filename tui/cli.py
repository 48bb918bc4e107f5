"""``xb-tui`` (and ``xb tui``): open the dashboard."""

from __future__ import annotations

import typer

from xb.core.settings import DEFAULT_ENDPOINT

app = typer.Typer(add_completion=False, help="The xb dashboard.")


def tui(
    endpoint: str = typer.Option(
        DEFAULT_ENDPOINT, "--endpoint", "-e", envvar="XB_ENDPOINT", help="REST API of xb."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="XB_API_KEY", help="Sent as a bearer token."
    ),
) -> None:
    """Open the dashboard: cluster, launch, and side-by-side chats."""
    from xb.tui.app import XbApp

    XbApp(endpoint, api_key).run()


app.command()(tui)


def main() -> None:
    app()
