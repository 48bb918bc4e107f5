"""Command-line options of the broker's peers (``xb-worker``, ``xb-api``): where the
broker is and how to trust it."""

from __future__ import annotations

import typer

from xb.core.keys import KeysError, PeerKeys, peer_keys
from xb.core.settings import BROKER_PORT, DEFAULT_HOST, xb_home

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
    """This home's peer keys and the broker's public key; None with --insecure."""
    try:
        return None if insecure else peer_keys(xb_home(), broker_key)
    except KeysError as exc:
        raise typer.BadParameter(str(exc), param_hint="--broker-key") from exc
