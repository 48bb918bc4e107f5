"""``xb-broker``: the broker and the REST facade in one process, and with --local a worker."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType

import typer

from xb.api import options
from xb.api.limits import Limits
from xb.api.options import SHUTDOWN_GRACE
from xb.broker import process
from xb.broker.handlers import SCHEDULERS
from xb.broker.server import DEFAULT_MAX_QUEUE
from xb.broker.state import STATE_FILE
from xb.core import peer_options
from xb.core.engines import ENGINES
from xb.core.keys import peer_keys
from xb.core.lifetime import child_env
from xb.core.paths import allow_folders
from xb.core.settings import API_PORT, BROKER_PORT, DEFAULT_HOST, xb_home

app = typer.Typer(add_completion=False, help="Run the xb broker and its OpenAI-compatible API.")
log = logging.getLogger("xb.broker")


@app.command()
def run(
    host: str = typer.Option(DEFAULT_HOST, "--host", help="Address the broker binds for workers."),
    port: int = typer.Option(BROKER_PORT, "--port", help="Broker port for workers."),
    api_host: str = typer.Option(DEFAULT_HOST, "--api-host", help="Address of the REST API."),
    api_port: int = typer.Option(API_PORT, "--api-port", help="Port of the REST API."),
    local: bool = typer.Option(False, "--local", help="Also start a worker on this machine."),
    launch: list[str] = typer.Option(
        [], "--launch", help="Launch this model once a worker joins: 'xb-demo' or a .gguf path."
    ),
    heartbeat_interval: float = peer_options.heartbeat_option("Seconds between heartbeats."),
    max_queue: int = typer.Option(
        DEFAULT_MAX_QUEUE,
        "--max-queue",
        min=0,
        help="Requests that may wait per model and tenant when every replica is busy; then "
        "429 (a model holds at most 4 times that, whoever sends them).",
    ),
    scheduler: str = typer.Option(
        "fair",
        "--scheduler",
        help="How waiting requests take free slots: 'fair' (weighted turns between "
        "tenants, interactive first) or 'fifo' (arrival order).",
    ),
    cors_origin: list[str] = options.CORS_ORIGIN,
    api_key: list[str] = options.API_KEY,
    api_keys_file: Path | None = options.API_KEYS_FILE,
    insecure: bool = peer_options.insecure_option(
        "Serve a non-loopback API host without API keys, and take plain, unauthenticated "
        "ZeroMQ peers."
    ),
    model_dir: list[Path] = peer_options.model_dir_option("The --local worker gets them too."),
    answer_timeout: float = options.ANSWER_TIMEOUT,
    write_timeout: float = options.WRITE_TIMEOUT,
) -> None:
    """Serve the broker on HOST:PORT and the API on API_HOST:API_PORT."""
    serve(
        host,
        port,
        api_host,
        api_port,
        local,
        launch,
        heartbeat_interval,
        max_queue,
        cors_origin,
        api_key=api_key,
        api_keys_file=api_keys_file,
        insecure=insecure,
        model_dirs=model_dir,
        limits=Limits(answer_timeout, write_timeout),
        scheduler=scheduler,
    )


def serve(
    host: str,
    port: int,
    api_host: str,
    api_port: int,
    local: bool,
    launch: list[str],
    heartbeat_interval: float,
    max_queue: int = DEFAULT_MAX_QUEUE,
    cors_origins: list[str] | None = None,
    *,
    api_key: list[str] | None = None,
    api_keys_file: Path | None = None,
    insecure: bool = False,
    model_dirs: list[Path] | None = None,
    limits: Limits | None = None,
    scheduler: str = "fair",
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if scheduler not in SCHEDULERS:
        typer.echo(f"xb-broker: --scheduler must be one of {', '.join(SCHEDULERS)}", err=True)
        raise typer.Exit(2)
    api_keys = options.api_keys_or_exit(
        "xb-broker", api_host, api_key or [], api_keys_file, insecure
    )
    # uvicorn stops on SIGTERM and then raises it again: this handler turns that into
    # SystemExit, so the cleanup below (the --local worker) runs instead of an abrupt end.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    home = xb_home()
    # A file named by --launch is the operator's own choice: that file, not its folder,
    # may be loaded. The --local worker inherits the list (XB_MODEL_DIRS).
    suffixes = tuple(s for kind in ENGINES.values() for s in kind.suffixes)
    files = [name for name in launch if name.lower().endswith(suffixes)]
    allow_folders([*(model_dirs or []), *files])
    # The broker runs in a process of its own (broker/process.py), the facade here.
    try:
        broker, bound = process.start(
            f"tcp://{host}:{port}",
            heartbeat_interval=heartbeat_interval,
            max_queue=max_queue,
            home=None if insecure else home,
            state=home / STATE_FILE,
            scheduler=scheduler,
        )
    except process.BrokerStartError as exc:
        typer.echo(f"xb-broker: {exc}", err=True)
        raise typer.Exit(1) from None
    stopping = threading.Event()
    process.watch(broker, stopping)
    # The facade here, and a --local worker, are peers of this home: their key is
    # allowed, and the broker's key is where they look for it.
    keys = None if insecure else peer_keys(home)
    reach = "127.0.0.1" if host in ("0.0.0.0", "*", "") else host
    address = f"tcp://{reach}:{port}"
    worker: subprocess.Popen[bytes] | None = None
    if local:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xb.worker",
                "--broker",
                address,
                "--heartbeat-interval",
                str(heartbeat_interval),
                *(["--insecure"] if insecure else []),
            ],
            env=child_env(),  # it stops when this process ends, however that happens
        )
    log.warning(
        "broker for workers on %s; OpenAI API on http://%s:%d/v1 (%s)",
        bound,
        api_host,
        api_port,
        f"{len(api_keys)} API keys" if api_keys.enabled else "no API keys",
    )
    try:
        options.serve_api(
            address,
            api_host,
            api_port,
            heartbeat_interval=heartbeat_interval,
            launch_on_start=launch,
            cors_origins=cors_origins or [],
            peer_keys=keys,
            api_keys=api_keys,
            limits=limits or Limits(),
        )
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(SHUTDOWN_GRACE)
            except subprocess.TimeoutExpired:
                worker.kill()
        stopping.set()
        process.stop(broker, SHUTDOWN_GRACE)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    app()
