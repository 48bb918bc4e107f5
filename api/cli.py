"""``xb-api``: the REST facade alone, for a broker that runs in another process or on
another host; any number of them may serve one broker."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from xb.api import options
from xb.api.limits import Limits
from xb.core import peer_options
from xb.core.paths import allow_folders
from xb.core.settings import API_PORT, DEFAULT_HOST

app = typer.Typer(add_completion=False, help="Serve xb's OpenAI-compatible API for a broker.")
log = logging.getLogger("xb.api")


@app.command()
def run(
    broker: str = peer_options.BROKER,
    host: str = typer.Option(DEFAULT_HOST, "--host", help="Address of the REST API."),
    port: int = typer.Option(API_PORT, "--port", help="Port of the REST API."),
    broker_key: str | None = peer_options.BROKER_KEY,
    heartbeat_interval: float = peer_options.heartbeat_option(
        "Seconds between pings to the broker."
    ),
    cors_origin: list[str] = options.CORS_ORIGIN,
    api_key: list[str] = options.API_KEY,
    api_keys_file: Path | None = options.API_KEYS_FILE,
    insecure: bool = peer_options.insecure_option(
        "Serve a non-loopback API host without API keys, and talk to a broker that runs "
        "with --insecure."
    ),
    model_dir: list[Path] = peer_options.model_dir_option(),
    answer_timeout: float = options.ANSWER_TIMEOUT,
    write_timeout: float = options.WRITE_TIMEOUT,
) -> None:
    """Serve the API on HOST:PORT for the broker at BROKER."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    api_keys = options.api_keys_or_exit("xb-api", host, api_key, api_keys_file, insecure)
    # Waited for before serving, not while: the bridge to the broker is made with these
    # keys, and serving meanwhile would need a bridge that gets them later only to answer
    # 503 to everything. A closed port tells a client or a health check as much, and every
    # route works from the moment it opens.
    keys = peer_options.keys_or_exit(broker_key, insecure)
    allow_folders(model_dir)
    log.warning(
        "OpenAI API on http://%s:%d/v1 for the broker at %s (%s)",
        host,
        port,
        broker,
        f"{len(api_keys)} API keys" if api_keys.enabled else "no API keys",
    )
    options.serve_api(
        broker,
        host,
        port,
        heartbeat_interval=heartbeat_interval,
        cors_origins=cors_origin,
        peer_keys=keys,
        api_keys=api_keys,
        limits=Limits(answer_timeout, write_timeout),
    )


def main() -> None:
    app()
