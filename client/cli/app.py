"""``xb``: manage models and chat from the shell, through the REST API."""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Iterable
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn

from xb.client import calls
from xb.client.cli import cache, keys, registry, usage
from xb.client.cli.shared import (
    API_KEY,
    AS_JSON,
    ENDPOINT,
    MAX_TOKENS,
    PRIORITY,
    TEMPERATURE,
    call,
    console,
    err,
    fail,
    print_json,
)
from xb.client.cli.waiting import WaitingLine
from xb.client.client import Client
from xb.client.errors import ClientError
from xb.client.tables import table
from xb.core.units import size_text

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Manage and chat with the models of an xb cluster.",
)


class Priority(enum.StrEnum):
    """How a request ranks: interactive goes first and may preempt batch work."""

    interactive = "interactive"
    batch = "batch"


class Speculative(enum.StrEnum):
    """How a replica drafts tokens for its answers (speculative decoding)."""

    ngram = "ngram"
    draft = "draft"
    off = "off"


@app.command()
def launch(
    model_name: str = typer.Argument(
        ...,
        help="A family of the registry (xb list --all), 'xb-demo', or any name with --model-path.",
    ),
    size: str | None = typer.Option(
        None, "--size", "-s", help="Size in billions of parameters, e.g. 0_5 or 7."
    ),
    model_format: str | None = typer.Option(
        None, "--format", help="gguf (llama.cpp) or ggml (chatglm.cpp)."
    ),
    quantization: str | None = typer.Option(
        None, "--quantization", "-q", help="e.g. q4_k_m; the family's first by default."
    ),
    model_path: str | None = typer.Option(
        None, "--model-path", help="A model file on the worker instead of the registry."
    ),
    uid: str | None = typer.Option(
        None, "--model-uid", "--uid", "-u", help="Model uid (default: the name)."
    ),
    model_type: str | None = typer.Option(
        None, "--model-type", "-t", help="LLM or embedding (default: the family's)."
    ),
    engine: str | None = typer.Option(None, "--engine", help="llama.cpp or chatglm.cpp."),
    replica: int = typer.Option(1, "--replica", "-r", help="Number of replicas."),
    n_ctx: int = typer.Option(2048, "--n-ctx", help="Context length in tokens."),
    worker: str | None = typer.Option(None, "--worker", "-w", help="Worker id or host to use."),
    parallel: int | None = typer.Option(
        None,
        "--parallel",
        min=1,
        max=64,
        help="Sequences each replica decodes at once (llama.cpp: 4 by default; others: 1).",
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="CPU threads per replica (default: the worker's share)."
    ),
    speculative: Speculative | None = typer.Option(
        None, "--speculative", help="Drafts: ngram (the default), draft (a draft model) or off."
    ),
    draft_tokens: int | None = typer.Option(
        None, "--draft-tokens", min=1, help="The longest draft (default 16)."
    ),
    draft_model: str | None = typer.Option(
        None, "--draft-model", help="A GGUF path on the worker or a registry family to draft."
    ),
    draft_size: str | None = typer.Option(
        None, "--draft-size", help="The draft family's size (default: its smallest)."
    ),
    draft_quantization: str | None = typer.Option(
        None, "--draft-quantization", help="The draft family's quantization (default: its first)."
    ),
    endpoint: str = ENDPOINT,
    api_key: str | None = API_KEY,
    as_json: bool = AS_JSON,
) -> None:
    """Launch a model, show its download and load progress, and wait until it is ready."""
    fields = {
        "model_path": model_path,
        "model_uid": uid,
        "model_type": model_type,
        "model_size_in_billions": size,
        "model_format": model_format,
        "quantization": quantization,
        "model_engine": engine,
        "replica": replica,
        "n_ctx": n_ctx,
        "worker": worker,
        "n_parallel": parallel,
        "n_threads": threads,
        "speculative": speculative,
        "draft_tokens": draft_tokens,
        "draft_model": draft_model,
        "draft_model_size_in_billions": draft_size,
        "draft_quantization": draft_quantization,
        "wait_ready": False,
    }
    model_uid = None
    with Client(endpoint, api_key) as client:
        try:
            model_uid = client.launch_model(model_name, **fields)
            state = _follow_launch(client, model_uid, quiet=as_json)
        except ClientError as exc:
            raise fail(exc) from exc
        except KeyboardInterrupt:
            if model_uid is not None:
                client.cancel_launch_model(model_uid)
            err.print(f"launch of {model_uid or model_name} cancelled")
            raise typer.Exit(130) from None
        if state["stage"] == "failed":
            client.terminate_model(model_uid)
            raise fail(ClientError(f"model {model_uid!r} failed to load: {state['error']}"))
    if as_json:
        print_json({"model_uid": model_uid})
    else:
        console.print(f"model [bold]{model_uid}[/bold] is ready")


def _follow_launch(client: Client, model_uid: str, quiet: bool) -> dict[str, Any]:
    """Poll the launch progress until it ends, drawing a progress bar unless ``quiet``."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[stage]}"),
        console=err,
        disable=quiet,
        transient=True,
    ) as bar:
        task = bar.add_task(f"launching {model_uid}", total=1.0, stage="placing")
        while True:
            state = client.get_launch_model_progress(model_uid)
            bar.update(task, completed=state["progress"], stage=calls.progress_text(state))
            if state["stage"] in ("ready", "failed"):
                return state
            time.sleep(0.2)


@app.command()
def scale(
    model_uid: str = typer.Argument(..., help="Model uid."),
    replica: int = typer.Argument(..., help="The number of replicas it should have."),
    endpoint: str = ENDPOINT,
    api_key: str | None = API_KEY,
) -> None:
    """Add or remove replicas of a running model."""
    info = call(endpoint, api_key, lambda client: client.scale_model(model_uid, replica))
    console.print(f"model [bold]{model_uid}[/bold] has {len(info['replicas'])} replicas")


@app.command("list")
def list_models(
    all_families: bool = typer.Option(
        False, "--all", "-a", help="List the registry's families instead of running models."
    ),
    endpoint: str = ENDPOINT,
    api_key: str | None = API_KEY,
    as_json: bool = AS_JSON,
) -> None:
    """List running models (or, with --all, every family that can be launched)."""
    if all_families:
        registry.show_registrations(endpoint, api_key, "LLM", as_json, also_embedding=True)
        return
    models = list(call(endpoint, api_key, Client.list_models).values())
    if as_json:
        print_json(models)
        return
    # Format and abilities in full are in --json; six columns do not fit 80 characters.
    rows = [
        (
            m["id"],
            m["model_name"],
            m["model_type"],
            f"{sum(r['state'] == 'ready' for r in m['replicas'])}/{m['replica']}",
            " ".join(sorted({r["worker_id"] for r in m["replicas"]})),
        )
        for m in models
    ]
    headers = ("UID", "Name", "Type", "Ready", "Workers")
    console.print(table(headers, rows, whole=(0, 1, 2, 3, 4), room=console.width), crop=False)


@app.command()
def terminate(
    model_uid: str | None = typer.Argument(None, help="Model uid."),
    model_uid_option: str | None = typer.Option(None, "--model-uid", "-u", help="Model uid."),
    endpoint: str = ENDPOINT,
    api_key: str | None = API_KEY,
) -> None:
    """Terminate a model and free its memory."""
    uid = model_uid or model_uid_option
    if not uid:
        raise typer.BadParameter("give the model uid")
    call(endpoint, api_key, lambda client: client.terminate_model(uid))
    console.print(f"model [bold]{uid}[/bold] terminated")


@app.command()
def workers(
    endpoint: str = ENDPOINT, api_key: str | None = API_KEY, as_json: bool = AS_JSON
) -> None:
    """List workers with their memory, models and load."""
    infos = call(endpoint, api_key, Client.get_workers_info)
    if as_json:
        print_json(infos)
        return
    # GPU memory is what a launch that offloads is placed by: shown once any worker has a GPU.
    gpu = any(w["memory"]["gpu_total"] for w in infos)
    rows = [
        (
            w["worker_id"],
            w["host"],
            f"{size_text(w['memory']['free'])} of {size_text(w['memory']['total'])}",
            *([_gpu_text(w["memory"])] if gpu else []),
            " ".join(f"{r['model_uid']} ({r['state']})" for r in w["replicas"]) or "-",
            str(w["queue_depth"]),
            str(w["in_flight"]),
            f"{w['heartbeat_age']:.1f} s ago",
        )
        for w in infos
    ]
    # One-word headers: rich will not fold a header to make room for a name.
    gpu_header = ["GPU"] if gpu else []
    headers = ("Worker", "Host", "Free", *gpu_header, "Models", "Queued", "Running", "Heartbeat")
    console.print(table(headers, rows, whole=(0,), room=console.width), crop=False)


def _gpu_text(memory: dict[str, int]) -> str:
    """A worker's free GPU memory of its total, or "-" where it has no GPU."""
    if not memory["gpu_total"]:
        return "-"
    return f"{size_text(memory['gpu_free'])} of {size_text(memory['gpu_total'])}"


@app.command()
def chat(
    model_uid: str = typer.Argument(..., help="Model uid to chat with."),
    message: str | None = typer.Option(None, "--message", "-m", help="Send one message and exit."),
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    max_tokens: int | None = MAX_TOKENS,
    temperature: float | None = TEMPERATURE,
    priority: Priority | None = PRIORITY,
    endpoint: str = ENDPOINT,
    api_key: str | None = API_KEY,
) -> None:
    """Chat with a model, streaming its answers; an empty line or Ctrl-D ends the chat."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    params = _sampling(max_tokens, temperature, priority)
    with Client(endpoint, api_key) as client:
        try:
            handle = client.get_model(model_uid)
        except ClientError as exc:
            raise fail(exc) from exc
        while True:
            if message is not None:
                text = message
            else:
                try:
                    text = console.input("[bold green]you>[/bold green] ")
                except (EOFError, KeyboardInterrupt):
                    break
                if not text.strip():
                    break
            history.append({"role": "user", "content": text})
            waiting = WaitingLine(err)
            try:
                config = {**params, "stream": True}
                chunks = handle.chat(history, generate_config=config, on_queued=waiting.show)
                pieces = (c["choices"][0]["delta"].get("content") for c in chunks)
                answer = _print_stream(pieces, waiting)
            except ClientError as exc:
                raise fail(exc) from exc
            history.append({"role": "assistant", "content": answer})
            if message is not None:
                break


def _sampling(
    max_tokens: int | None, temperature: float | None, priority: Priority | None
) -> dict[str, Any]:
    """The request fields the chat and generate options set."""
    fields: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    if priority is not None:
        fields["priority"] = priority.value
    return {name: value for name, value in fields.items() if value is not None}


def _print_stream(pieces: Iterable[str | None], waiting: WaitingLine) -> str:
    """Print streamed text as it comes, once ``waiting`` has cleared the line that said
    where the stream waited; the whole text."""
    text: list[str] = []
    try:
        for piece in pieces:
            waiting.clear()
            if piece:
                text.append(piece)
                console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
    finally:
        waiting.clear()
    console.print()
    return "".join(text)


@app.command()
def generate(
    model_uid: str = typer.Argument(..., help="Model uid."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text to continue."),
    max_tokens: int | None = MAX_TOKENS,
    temperature: float | None = TEMPERATURE,
    priority: Priority | None = PRIORITY,
    endpoint: str = ENDPOINT,
    api_key: str | None = API_KEY,
) -> None:
    """Continue a prompt (a text completion), streaming the text."""
    config = {**_sampling(max_tokens, temperature, priority), "stream": True}
    waiting = WaitingLine(err)
    with Client(endpoint, api_key) as client:
        try:
            handle = client.get_model(model_uid)
            chunks = handle.generate(prompt, generate_config=config, on_queued=waiting.show)
            _print_stream((c["choices"][0]["text"] for c in chunks), waiting)
        except ClientError as exc:
            raise fail(exc) from exc


@functools.cache
def build() -> typer.Typer:
    """The client's ``xb`` commands: these, the registry's, the cache's and the keys'
    (``xb.serve.cli`` adds the dashboard's)."""
    registry.install(app)
    cache.install(app)
    keys.install(app)
    usage.install(app)
    return app
