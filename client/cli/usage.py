"""``xb usage``: what each tenant used of each model, as the broker counted it."""

from __future__ import annotations

import re
from typing import Any

import typer

from xb.client.cli.shared import API_KEY, AS_JSON, ENDPOINT, call, console, err, print_json
from xb.client.tables import table

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
HEADERS = (
    "Tenant",
    "Model",
    "Requests",
    "Prompt",
    "Cached",
    "Completion",
    "Wait mean",
    "Wait p95",
    "Preempted",
)


def seconds(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``24h`` or ``7d`` in seconds."""
    found = _DURATION.match(text.strip())
    if found is None or float(found[1]) <= 0:
        raise typer.BadParameter(f"{text!r}: give a duration such as 90, 15m, 24h or 7d")
    return float(found[1]) * _UNITS[found[2]]


def rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """The table's rows: one per tenant and model."""
    return [
        (
            r["tenant"] or '""',  # the shared tenant of requests without a key or user
            r["model"],
            str(r["requests"]),
            str(r["prompt_tokens"]),
            str(r["cached_tokens"]),
            str(r["completion_tokens"]),
            f"{r['queue_wait_mean']:.3f} s",
            f"<={r['queue_wait_p95']:g} s",
            str(r["preemptions"]),
        )
        for r in report["data"]
    ]


def usage(
    since: str | None = typer.Option(
        None, "--since", help="The last this long: 90 (seconds), 15m, 24h, 7d (default 24h)."
    ),
    start: float | None = typer.Option(None, "--start", help="From this time, Unix seconds."),
    end: float | None = typer.Option(None, "--end", help="Until this time (default now)."),
    endpoint: str = ENDPOINT,
    api_key: str | None = API_KEY,
    as_json: bool = AS_JSON,
) -> None:
    """Usage by tenant and model: requests, prompt tokens (cached: reused from a prefix
    cache), completion tokens, time waited for a slot, preemptions. Needs an admin key."""
    window = seconds(since) if since is not None else None
    report = call(endpoint, api_key, lambda client: client.usage(window, start, end))
    if as_json:
        print_json(report)
        return
    if not report["data"]:
        err.print("no requests in this window")
    console.print(table(HEADERS, rows(report), whole=(0, 1), room=console.width), crop=False)
    if report["truncated"]:
        err.print("more tenants and models than one answer holds: the busiest are shown")


def install(app: typer.Typer) -> None:
    app.command("usage")(usage)
