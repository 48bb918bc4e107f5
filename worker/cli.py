"""``xb-worker``: connect to a broker and host models."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType

import typer

from xb.core import peer_options
from xb.core import protocol as p
from xb.core.lifetime import die_with_parent
from xb.core.paths import allow_folders
from xb.worker.memory import parse_size
from xb.worker.server import Worker

app = typer.Typer(add_completion=False, help="Host models for an xb broker.")


@app.command()
def run(
    broker: str = peer_options.BROKER,
    heartbeat_interval: float = peer_options.heartbeat_option("Seconds between heartbeats."),
    memory_limit: str | None = typer.Option(
        None, "--memory-limit", help="Offer at most this much memory, e.g. 512MB or 8GiB."
    ),
    broker_key: str | None = peer_options.BROKER_KEY,
    insecure: bool = peer_options.insecure_option(
        "Talk to a broker that runs with --insecure (no CURVE)."
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        max=p.MAX_THREADS,
        help="CPU threads the llama.cpp models here share, split among those working "
        "(default: one per core it may use). A launch's n_threads overrides it for one model.",
    ),
    model_dir: list[Path] = peer_options.model_dir_option(),
) -> None:
    """Connect to BROKER, announce this machine and serve the models it places here."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    allow_folders(model_dir)  # model processes inherit them
    try:
        limit = parse_size(memory_limit) if memory_limit is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--memory-limit") from exc
    keys = peer_options.keys_or_exit(broker_key, insecure)
    worker = Worker(
        broker,
        heartbeat_interval=heartbeat_interval,
        memory_limit=limit,
        threads=threads,
        keys=keys,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    die_with_parent(signal.SIGTERM)  # a --local worker stops with its broker
    worker.run()


def main() -> None:
    app()
