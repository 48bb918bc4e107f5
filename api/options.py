"""What the commands that serve the REST facade (``xb-broker`` and ``xb-api``) share: its
options, the checks made before serving it, and serving it."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
import uvicorn

from xb.api.app import create_app
from xb.api.auth import APIKeyError, APIKeys, exposure_refusal, load_keys
from xb.api.limits import DEFAULT_ANSWER_TIMEOUT, DEFAULT_WRITE_TIMEOUT, Limits
from xb.core.keys import PeerKeys

CORS_ORIGIN = typer.Option(
    [],
    "--cors-origin",
    help="Let web pages from this origin call the API (repeatable; *: any).",
)
API_KEY = typer.Option(
    [], "--api-key", help="An API key with full access (repeatable). Prefer --api-keys-file."
)
API_KEYS_FILE = typer.Option(
    None,
    "--api-keys-file",
    dir_okay=False,
    help="API keys, one a line: KEY SCOPES (inference, admin; comma-separated).",
)
ANSWER_TIMEOUT = typer.Option(
    DEFAULT_ANSWER_TIMEOUT,
    "--answer-timeout",
    min=1,
    help="Seconds a whole (non-streamed) answer may take; then it is cancelled (504).",
)
WRITE_TIMEOUT = typer.Option(
    DEFAULT_WRITE_TIMEOUT,
    "--write-timeout",
    min=1,
    help="Seconds a stream's client may leave a write unread; then the stream is cancelled.",
)


def api_keys_or_exit(
    command: str, host: str, api_key: list[str], api_keys_file: Path | None, insecure: bool
) -> APIKeys:
    """The API keys to serve with, or the command ends (a bad key, or a host that others
    can reach with no keys and no --insecure); warnings about them are logged."""
    try:
        keys, warnings = load_keys(api_key, api_keys_file)
    except APIKeyError as exc:
        raise typer.BadParameter(str(exc)) from None
    refusal = exposure_refusal(host, keys, insecure)
    if refusal is not None:
        typer.echo(f"{command}: {refusal}", err=True)
        raise typer.Exit(2)
    for warning in warnings:
        logging.getLogger("xb.api").warning("%s", warning)
    return keys


SHUTDOWN_GRACE = 3  # seconds open requests get after SIGTERM


def serve_api(
    broker: str,
    host: str,
    port: int,
    *,
    heartbeat_interval: float,
    cors_origins: list[str],
    peer_keys: PeerKeys | None,
    api_keys: APIKeys,
    limits: Limits,
    launch_on_start: list[str] | None = None,
) -> None:
    """Serve the facade for ``broker`` on ``host``:``port`` until interrupted."""
    uvicorn.run(
        create_app(
            broker,
            heartbeat_interval=heartbeat_interval,
            launch_on_start=launch_on_start,
            cors_origins=cors_origins,
            peer_keys=peer_keys,
            api_keys=api_keys,
            limits=limits,
        ),
        host=host,
        port=port,
        log_level="warning",
        # Requests still open this long after SIGTERM are cut: a hung one never holds
        # the shutdown.
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
