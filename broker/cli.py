"""``xb-broker``: the broker and the REST facade in one process, and with --local a worker."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

import typer
import uvicorn

from xb.api.app import create_app
from xb.api.auth import APIKeyError, exposure_refusal, load_keys
from xb.api.limits import DEFAULT_ANSWER_TIMEOUT, DEFAULT_WRITE_TIMEOUT, Limits
from xb.broker.server import DEFAULT_MAX_QUEUE, Broker, serve_in_thread
from xb.broker.state import STATE_FILE
from xb.keys import peer_keys
from xb.lifetime import child_env
from xb.paths import allow_folders
from xb.settings import API_PORT, BROKER_PORT, DEFAULT_HOST, HEARTBEAT_INTERVAL, xb_home

app = typer.Typer(add_completion=False, help="Run the xb broker and its OpenAI-compatible API.")
log = logging.getLogger("xb.broker")

SHUTDOWN_GRACE = 3  # seconds open requests and the --local worker get to finish


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
    heartbeat_interval: float = typer.Option(
        HEARTBEAT_INTERVAL, "--heartbeat-interval", help="Seconds between heartbeats."
    ),
    max_queue: int = typer.Option(
        DEFAULT_MAX_QUEUE,
        "--max-queue",
        min=0,
        help="Requests that may wait per model when every replica is busy; then 429.",
    ),
    cors_origin: list[str] = typer.Option(
        [],
        "--cors-origin",
        help="Let web pages from this origin call the API (repeatable; *: any).",
    ),
    api_key: list[str] = typer.Option(
        [], "--api-key", help="An API key with full access (repeatable). Prefer --api-keys-file."
    ),
    api_keys_file: Path | None = typer.Option(
        None,
        "--api-keys-file",
        dir_okay=False,
        help="API keys, one a line: KEY SCOPES (inference, admin; comma-separated).",
    ),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="Serve a non-loopback --api-host without API keys, and take plain, "
        "unauthenticated ZeroMQ peers.",
    ),
    model_dir: list[Path] = typer.Option(
        [],
        "--model-dir",
        exists=True,
        file_okay=False,
        help="A folder whose model files launches and registrations may name (repeatable); "
        "~/.xb/models and the download cache always are. The --local worker gets them too.",
    ),
    answer_timeout: float = typer.Option(
        DEFAULT_ANSWER_TIMEOUT,
        "--answer-timeout",
        min=1,
        help="Seconds a whole (non-streamed) answer may take; then it is cancelled (504).",
    ),
    write_timeout: float = typer.Option(
        DEFAULT_WRITE_TIMEOUT,
        "--write-timeout",
        min=1,
        help="Seconds a stream's client may leave a write unread; then the stream is cancelled.",
    ),
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
) -> None:
    try:
        api_keys, warnings = load_keys(api_key or [], api_keys_file)
    except APIKeyError as exc:
        raise typer.BadParameter(str(exc)) from None
    refusal = exposure_refusal(api_host, api_keys, insecure)
    if refusal is not None:
        typer.echo(f"xb-broker: {refusal}", err=True)
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # uvicorn stops on SIGTERM and then raises it again: this handler turns that into
    # SystemExit, so the cleanup below (the --local worker) runs instead of an abrupt end.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    home = xb_home()
    for warning in warnings:
        log.warning("%s", warning)
    # A file named by --launch is the operator's own choice: that file, not its folder,
    # may be loaded. The --local worker inherits the list (XB_MODEL_DIRS).
    files = [name for name in launch if name.endswith((".gguf", ".bin"))]
    allow_folders([*(model_dirs or []), *files])
    broker = Broker(
        f"tcp://{host}:{port}",
        heartbeat_interval=heartbeat_interval,
        max_queue=max_queue,
        home=None if insecure else home,
        state=home / STATE_FILE,
    )
    # The facade in this process, and a --local worker, are peers of this home: their key
    # is allowed, and the broker's key is where they look for it.
    keys = None if insecure else peer_keys(home)
    thread = serve_in_thread(broker)
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
        broker.address,
        api_host,
        api_port,
        f"{len(api_keys)} API keys" if api_keys.enabled else "no API keys",
    )
    try:
        uvicorn.run(
            create_app(
                address,
                heartbeat_interval=heartbeat_interval,
                launch_on_start=launch,
                cors_origins=cors_origins,
                peer_keys=keys,
                api_keys=api_keys,
                limits=limits,
            ),
            host=api_host,
            port=api_port,
            log_level="warning",
            # Requests still open this long after SIGTERM are cut: a hung one never holds
            # the shutdown.
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
        )
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(SHUTDOWN_GRACE)
            except subprocess.TimeoutExpired:
                worker.kill()
        broker.stop()
        thread.join(SHUTDOWN_GRACE)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    app()
