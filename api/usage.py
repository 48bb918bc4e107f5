"""``GET /v1/usage``: what each tenant used of each model in a window of time, as the
broker counted it (``broker/usage.py``), and who is running or waiting now.

The window is ``since`` seconds back from now (the last 24 hours by default), or
``start`` to ``end`` in Unix seconds (``end`` defaults to now). The broker counts in
minute buckets: a window holds every minute it touches.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from xb.api.auth import ADMIN, scope
from xb.api.body import CheckedRoute
from xb.api.errors import APIError
from xb.api.management import call
from xb.core import protocol as p

router = APIRouter(route_class=CheckedRoute)

DEFAULT_SINCE = 86_400.0
MAX_WINDOW = 366 * 86_400.0  # the broker keeps 31 days; a longer window is no mistake


def p95(waits: list[int]) -> float:
    """The 95th percentile of a queue-wait histogram: the upper bound of the bucket that
    holds it (the last finite bound for the open bucket); 0 without requests."""
    total = sum(waits)
    if not total:
        return 0.0
    seen = 0
    finite = [b for b in p.QUEUE_WAIT_BUCKETS if b != float("inf")]
    for bound, count in zip(p.QUEUE_WAIT_BUCKETS, waits, strict=False):
        seen += count
        if seen >= 0.95 * total:
            return bound if bound != float("inf") else finite[-1]
    return finite[-1]


def row(entry: p.UsageRow) -> dict[str, Any]:
    return {
        "tenant": entry.tenant,
        "model": entry.model,
        "requests": entry.requests,
        "prompt_tokens": entry.prompt_tokens,
        "cached_tokens": entry.cached_tokens,
        "completion_tokens": entry.completion_tokens,
        "total_tokens": entry.prompt_tokens + entry.completion_tokens,
        "preemptions": entry.preemptions,
        "queue_wait_mean": round(entry.queue_wait / entry.requests, 6) if entry.requests else 0.0,
        "queue_wait_p95": p95(entry.waits),
    }


def window(since: float | None, start: float | None, end: float | None) -> tuple[float, float]:
    """The window asked for, in Unix seconds; a 400 for one that makes no sense."""
    now = time.time()
    if since is not None and (start is not None or end is not None):
        raise APIError(400, "give either 'since' or 'start' (and 'end'), not both", param="since")
    if since is not None or start is None:
        seconds = DEFAULT_SINCE if since is None else since
        if not 0 < seconds <= MAX_WINDOW:
            raise APIError(
                400, f"'since' is seconds back from now, above 0 and at most {MAX_WINDOW:.0f}",
                param="since",
            )  # fmt: skip
        return now - seconds, now
    stop = now if end is None else end
    if not 0 <= start <= stop or stop - start > MAX_WINDOW:
        raise APIError(
            400,
            f"'start' and 'end' are Unix seconds, start <= end, at most {MAX_WINDOW:.0f} s apart",
            param="start",
        )
    return start, stop


@router.get("/v1/usage", openapi_extra=scope(ADMIN))
async def usage(
    request: Request,
    since: float | None = Query(None, description="Seconds back from now (default 86400)."),
    start: float | None = Query(None, description="Window start, Unix seconds."),
    end: float | None = Query(None, description="Window end, Unix seconds (default now)."),
) -> JSONResponse:
    first, last = window(since, start, end)
    report: p.UsageReport = await call(
        request, lambda rid: p.UsageCall(rid, first, last), p.UsageReport
    )
    return JSONResponse(
        {
            "object": "usage",
            "start": report.start,
            "end": report.end,
            "data": [row(r) for r in report.rows],
            "active": [
                {"tenant": a.tenant, "model": a.model, "running": a.running, "waiting": a.waiting}
                for a in report.active
            ],
            "truncated": report.truncated,
        }
    )
