"""``xb cache``: the model files this machine has downloaded, under its xb home."""

from __future__ import annotations

import typer

from xb.client.cli.shared import AS_JSON, console, err, print_json
from xb.client.tables import table
from xb.core.model_cache import CacheError, cache_dir, cached_files, remove_cached
from xb.core.settings import xb_home
from xb.core.units import size_text

cache = typer.Typer(
    help="Model files downloaded on this machine (a worker's cache).", no_args_is_help=True
)


@cache.command("list")
def list_cache(as_json: bool = AS_JSON) -> None:
    """List the cached model files."""
    files = cached_files(xb_home())
    if as_json:
        print_json(files)
        return
    rows = [(f["repo_id"], f["file"], f["revision"][:12], size_text(f["size"])) for f in files]
    headers = ("Repository", "File", "Revision", "Size")
    console.print(str(cache_dir(xb_home())))
    console.print(table(headers, rows, whole=(0, 1, 2, 3), room=console.width), crop=False)


@cache.command("remove")
def remove(repo_id: str = typer.Argument(..., help="The repository, owner/name.")) -> None:
    """Delete a repository's files from the cache."""
    try:
        freed = remove_cached(xb_home(), repo_id)
    except CacheError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"removed {repo_id}, {size_text(freed)} freed")


def install(app: typer.Typer) -> None:
    app.add_typer(cache, name="cache")
