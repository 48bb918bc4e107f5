"""``xb registrations``, ``xb register``, ``xb unregister``: the registry from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from xb.client.cli.shared import API_KEY, AS_JSON, ENDPOINT, call, console, fail, print_json
from xb.client.client import Client
from xb.client.errors import ClientError
from xb.client.tables import table


def show_registrations(
    endpoint: str,
    api_key: str | None,
    model_type: str,
    as_json: bool,
    *,
    also_embedding: bool = False,
) -> None:
    types = (
        [model_type, "embedding"] if also_embedding and model_type != "embedding" else [model_type]
    )

    def every(client: Client) -> list[dict[str, Any]]:
        return [f for kind in types for f in client.list_model_registrations(kind)]

    families = call(endpoint, api_key, every)
    if as_json:
        print_json(families)
        return
    # Languages and abilities are in --json: eight columns do not fit 80 characters.
    rows = [
        (
            f["model_name"],
            f["model_type"],
            ", ".join(f["model_formats"]),
            ", ".join(s.replace("_", ".") for s in f["model_sizes_in_billions"]),
            ", ".join(f["quantizations"]),
            "yes" if f["is_builtin"] else "no",
        )
        for f in families
    ]
    headers = ("Name", "Type", "Format", "Sizes (B)", "Quantizations", "Built in")
    console.print(table(headers, rows, whole=(0, 1, 2, 5), room=console.width), crop=False)


def registrations(
    model_type: str = typer.Option("LLM", "--model-type", "--type", "-t", help="LLM or embedding."),
    endpoint: str = ENDPOINT,
    api_key: str | None = API_KEY,
    as_json: bool = AS_JSON,
) -> None:
    """List the families of the registry, built-in and registered."""
    show_registrations(endpoint, api_key, model_type, as_json)


def register(
    file: Path = typer.Option(
        ..., "--file", "-f", exists=True, dir_okay=False, help="The family spec, a JSON file."
    ),
    model_type: str = typer.Option("LLM", "--model-type", "--type", "-t", help="LLM or embedding."),
    endpoint: str = ENDPOINT,
    api_key: str | None = API_KEY,
) -> None:
    """Register a model family (kept under the broker's xb home)."""
    text = file.read_text()
    with Client(endpoint, api_key) as client:
        try:
            client.register_model(model_type, text)
        except ClientError as exc:
            raise fail(exc) from exc
    console.print(f"registered the family in {file.name}")


def unregister(
    model_name: str = typer.Argument(..., help="The family's model_name."),
    model_type: str = typer.Option("LLM", "--model-type", "--type", "-t", help="LLM or embedding."),
    endpoint: str = ENDPOINT,
    api_key: str | None = API_KEY,
) -> None:
    """Remove a registered family; built-in families stay."""
    call(endpoint, api_key, lambda client: client.unregister_model(model_type, model_name))
    console.print(f"unregistered {model_name}")


def install(app: typer.Typer) -> None:
    app.command()(registrations)
    app.command()(register)
    app.command()(unregister)
