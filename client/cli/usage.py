"""``xb usage``: what each tenant used of each model, as the broker counted it."""

from __future__ import annotations

import re
from typing import Any

import typer

from xb.client.cli.shared import API_KEY, AS_JSON, ENDPOINT, call, console, err, print_json
from xb.client.tables import table

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
# One-word headers and short figures, so that a table of usual names fits 80 columns
# (rich folds what does not fit, which reads as two rows); --json has the exact figures.
HEADERS = ("Tenant", "Model", "Reqs", "Prompt", "Cached", "Output", "Wait", "p95", "Preempt")


def seconds(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``24h`` or ``7d`` in seconds."""
    found = _DURATION.match(text.strip())
    if found is None or float(found[1]) <= 0:
        raise typer.BadParameter(f"{text!r}: give a duration such as 90, 15m, 24h or 7d")
    return float(found[1]) * _UNITS[found[2]]


def count(value: int) -> str:
    """``9876``, ``12.3k``, ``9.88M``: at most 5 characters."""
    if value < 10_000:
        return str(value)
    for limit, unit in ((1e3, "k"), (1e6, "M")):
        if value / limit < 999.5:
            return f"{value / limit:.3g}{unit}"
    return f"{value / 1e9:.3g}G"


def duration(value: float) -> str:
    """``0ms``, ``12ms``, ``2.5s``, ``41s``: at most 5 characters below 1,000 s."""
    if value < 0.9995:
        return f"{value * 1000:.0f}ms"
    return f"{value:.2g}s" if value < 99.5 else f"{value:.0f}s"


def rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """The table's rows: one per tenant and model."""
    return [
        (
            r["tenant"] or '""',  # the shared tenant of requests without a key or user
            r["model"],
            count(r["requests"]),
            count(r["prompt_tokens"]),
            count(r["cached_tokens"]),
            count(r["completion_tokens"]),
            duration(r["queue_wait_mean"]),
            duration(r["queue_wait_p95"]),  # the top of its histogram bucket
            count(r["preemptions"]),
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
    cache), completion tokens, time waited for a slot (mean, and the 95th percentile: the
    top of the bucket it falls in), preemptions. Needs an admin key."""
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
