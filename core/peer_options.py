"""Command-line options shared by ``xb-broker``, ``xb-api`` and ``xb-worker``, declared
once: where the broker is and how to trust it, heartbeats, model folders, ``--insecure``."""

from __future__ import annotations

from pathlib import Path

import typer

from xb.core.keys import KeysError, PeerKeys, await_peer_keys
from xb.core.settings import BROKER_PORT, DEFAULT_HOST, HEARTBEAT_INTERVAL, xb_home

BROKER = typer.Option(
    f"tcp://{DEFAULT_HOST}:{BROKER_PORT}", "--broker", help="Broker address, tcp://HOST:PORT."
)
BROKER_KEY = typer.Option(
    None,
    "--broker-key",
    help="The broker's public key, or its .key file ('xb keys' on the broker's machine). "
    "Needed when the broker runs with another XB_HOME, on another machine say.",
)


def keys_or_exit(broker_key: str | None, insecure: bool) -> PeerKeys | None:
    """This home's peer keys and the broker's public key; None with --insecure. Without
    --broker-key, a broker of this home not started yet is waited for, however long."""
    try:
        return None if insecure else await_peer_keys(xb_home(), broker_key)
    except KeysError as exc:
        raise typer.BadParameter(str(exc), param_hint="--broker-key") from exc


_MODEL_DIR_HELP = (
    "A folder whose model files launches and registrations may name (repeatable); "
    "~/.xb/models and the download cache always are."
)


def model_dir_option(more: str = "") -> list[Path]:
    """``--model-dir``; ``more`` adds a sentence to its help."""
    return typer.Option(  # type: ignore[no-any-return]
        [],
        "--model-dir",
        exists=True,
        file_okay=False,
        help=f"{_MODEL_DIR_HELP} {more}".strip(),
    )


def insecure_option(meaning: str) -> bool:
    """``--insecure``; ``meaning`` is its help: what it means for this command."""
    return typer.Option(False, "--insecure", help=meaning)  # type: ignore[no-any-return]


def heartbeat_option(meaning: str) -> float:
    """``--heartbeat-interval``; ``meaning`` is its help."""
    return typer.Option(  # type: ignore[no-any-return]
        HEARTBEAT_INTERVAL, "--heartbeat-interval", help=meaning
    )
