"""What the client's commands share: the endpoint and key options, JSON output, and
ending a command with a message when the API refuses."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from xb.client.client import Client
from xb.client.errors import ClientError
from xb.core.settings import DEFAULT_ENDPOINT, DEFAULT_MAX_TOKENS, MAX_TOKENS_HELP

console = Console()
err = Console(stderr=True)

ENDPOINT = typer.Option(
    DEFAULT_ENDPOINT, "--endpoint", "-e", envvar="XB_ENDPOINT", help="REST API of the xb broker."
)
API_KEY = typer.Option(
    None,
    "--api-key",
    envvar="XB_API_KEY",
    help="API key, sent as a bearer token (when the broker takes keys).",
)
AS_JSON = typer.Option(False, "--json", help="Print JSON for scripts.")
MAX_TOKENS = typer.Option(DEFAULT_MAX_TOKENS, "--max-tokens", "-n", min=1, help=MAX_TOKENS_HELP)
TEMPERATURE = typer.Option(None, "--temperature", help="Sampling temperature.")
PRIORITY = typer.Option(
    None,
    "--priority",
    help="interactive (goes first, may preempt batch work) or batch; default: the key's.",
)


T = TypeVar("T")


def fail(exc: ClientError) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


def call(endpoint: str, api_key: str | None, action: Callable[[Client], T]) -> T:
    """Run ``action`` with a client; an API error ends the command with exit code 1."""
    with Client(endpoint, api_key) as client:
        try:
            return action(client)
        except ClientError as exc:
            raise fail(exc) from exc


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))
