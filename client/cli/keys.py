"""``xb keys``: this machine's CURVE keys, the broker's, and the broker's allow-list."""

from __future__ import annotations

import typer

from xb.client.cli.shared import AS_JSON, console, err, print_json
from xb.core.keys import KeysError, allow, allowed, keys_dir, load_or_create, parse_key
from xb.core.settings import xb_home

keys = typer.Typer(
    help="ZeroMQ CURVE keys: a worker on another machine needs the broker's public key, "
    "and the broker needs the worker's in its allow-list.",
    invoke_without_command=True,
)


@keys.callback()
def show(ctx: typer.Context, as_json: bool = AS_JSON) -> None:
    """Print this machine's public keys (made the first time), and the allowed ones."""
    if ctx.invoked_subcommand is not None:
        return
    home = xb_home()
    peer = load_or_create(home, "peer").public.decode()
    try:
        broker: str | None = parse_key(str(keys_dir(home) / "broker.key")).decode()
    except KeysError:
        broker = None  # no broker has run with this home
    listed = sorted(key.decode() for key in allowed(home))
    if as_json:
        print_json({"peer": peer, "broker": broker, "allowed": listed})
        return
    # z85 keys hold "[" and "]": printed as they are, never read as markup.
    lines = ["this machine's peer key (its workers' and facades'):", f"  {peer}"]
    if broker:
        lines += ["the broker's public key (xb-worker --broker-key):", f"  {broker}"]
    lines.append(f"keys the broker here accepts ({keys_dir(home) / 'allowed'}):")
    lines += [f"  {key}" for key in listed]
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


# A Z85 key may begin with "-": it is the argument, not an option the command lacks.
@keys.command("allow", context_settings={"ignore_unknown_options": True})
def allow_key(
    key: str = typer.Argument(..., help="A worker's public key, or its .key file."),
    name: str = typer.Option(..., "--name", help="A name for the key file, e.g. the host."),
) -> None:
    """Let the broker on this machine accept a peer with this public key."""
    try:
        path = allow(xb_home(), key, name)
    except KeysError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"allowed: {path}", markup=False, highlight=False, soft_wrap=True)


def install(app: typer.Typer) -> None:
    app.add_typer(keys, name="keys")
