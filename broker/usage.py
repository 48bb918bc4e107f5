"""Usage per tenant and model, counted by the broker: requests that ended with FINAL,
their prompt tokens (and those reused from a prefix cache), completion tokens,
preemptions, and how long each waited from SUBMIT to its dispatch to a replica.

Counts go into per-minute buckets in the broker's state file, kept ``RETENTION`` seconds
and at most ``MAX_BUCKET_ROWS`` rows (the oldest minutes go first), so a window of time
can be answered after a restart. As for quotas (``quotas.py``), they are written on the
broker's periodic tick and when it stops, never per request: a request's end only
appends its figures to a list, which the tick adds up. Answering a usage call writes them
first, so the answer holds every request that ended before it. Beside the
buckets, totals since the broker started (for ``/metrics``) are kept in memory for at
most ``MAX_TOTALS`` tenant and model pairs, the least recently used forgotten first: the
OpenAI ``user`` field names tenants without bound.
"""

from __future__ import annotations

import bisect
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from xb.broker.cluster import Cluster
from xb.core import protocol as p

RETENTION = 31 * 86_400
MAX_BUCKET_ROWS = 500_000
MAX_TOTALS = 1024
MAX_PENDING = 100_000  # ended requests waiting for the next flush; more flush at once
MAX_TIMED = 65_536  # requests whose arrival time is kept until their dispatch
_BOUNDS = p.QUEUE_WAIT_BUCKETS
_WAITS = [f"w{i}" for i in range(len(_BOUNDS))]
_COUNTS = ["requests", "prompt", "cached", "completion", "preemptions", "wait"]
_COLUMNS = _COUNTS + _WAITS


class _Ended(NamedTuple):
    """A request that ended with FINAL, as the tick will count it."""

    at: float  # wall-clock seconds
    tenant: str
    model: str
    usage: p.Usage
    preemptions: int
    wait: float


@dataclass
class _Counts:
    requests: int = 0
    prompt: int = 0
    cached: int = 0
    completion: int = 0
    preemptions: int = 0
    wait: float = 0.0
    waits: list[int] = field(default_factory=lambda: [0] * len(_BOUNDS))

    def add(self, ended: _Ended) -> None:
        self.requests += 1
        self.prompt += ended.usage.prompt_tokens
        self.cached += ended.usage.cached_tokens
        self.completion += ended.usage.completion_tokens
        self.preemptions += ended.preemptions
        self.wait += ended.wait
        self.waits[bisect.bisect_left(_BOUNDS, ended.wait)] += 1

    def values(self) -> tuple[float, ...]:
        return (
            self.requests,
            self.prompt,
            self.cached,
            self.completion,
            self.preemptions,
            self.wait,
            *self.waits,
        )


def _row(tenant: str, model: str, values: tuple[float, ...] | list[float]) -> p.UsageRow:
    requests, prompt, cached, completion, preemptions, wait, *waits = values
    return p.UsageRow(
        tenant,
        model,
        int(requests),
        int(prompt),
        int(cached),
        int(completion),
        int(preemptions),
        round(float(wait), 6),
        [int(w) for w in waits],
    )


class UsageBook:
    """``db``: the state file's connection (only the broker's thread uses it); ``clock``:
    wall-clock seconds (buckets are minutes of the calendar, across restarts)."""

    def __init__(self, db: sqlite3.Connection, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._pending: list[_Ended] = []
        self._totals: OrderedDict[tuple[str, str], _Counts] = OrderedDict()
        # Plain dicts, oldest first (cheaper than OrderedDict on the request path).
        self._timed: dict[str, float] = {}  # request id: its arrival, until its dispatch
        self._waited: dict[str, float] = {}  # request id: its wait, until its end
        columns = ", ".join(f"{c} {'REAL' if c == 'wait' else 'INTEGER'}" for c in _COLUMNS)
        with db:
            db.execute(
                f"CREATE TABLE IF NOT EXISTS usage (minute INTEGER, tenant TEXT, model TEXT, "
                f"{columns}, PRIMARY KEY (minute, tenant, model))"
            )

    # ---- from the request path ------------------------------------------------------

    def arrived(self, request_id: str) -> None:
        timed = self._timed
        timed[request_id] = time.monotonic()
        if len(timed) > MAX_TIMED:
            del timed[next(iter(timed))]  # waited so long it is likely gone

    def dispatched(self, request_id: str) -> None:
        arrived = self._timed.pop(request_id, None)
        if arrived is not None:
            waited = self._waited
            waited[request_id] = time.monotonic() - arrived
            if len(waited) > MAX_TIMED:
                del waited[next(iter(waited))]

    def ended(self, request_id: str) -> None:
        """A request ended without FINAL: nothing of it is counted."""
        self._timed.pop(request_id, None)
        self._waited.pop(request_id, None)

    def finished(self, submit: p.Submit, final: p.Final) -> None:
        wait = self._waited.pop(submit.request_id, None)
        if wait is None:  # its wait was forgotten (``MAX_TIMED`` later requests came)
            self._timed.pop(submit.request_id, None)
            wait = 0.0
        ended = _Ended(
            self._clock(), submit.tenant, submit.model_uid, final.usage, final.preemptions, wait
        )
        self._pending.append(ended)
        if len(self._pending) >= MAX_PENDING:
            self.flush()

    # ---- out ------------------------------------------------------------------------

    def _tally(self) -> dict[tuple[int, str, str], _Counts]:
        """Add up the requests that ended since the last tally: into the totals, and by
        minute, tenant and model for the buckets."""
        buckets: dict[tuple[int, str, str], _Counts] = {}
        totals = self._totals
        for ended in self._pending:
            key = (ended.tenant, ended.model)
            bucket = buckets.get((int(ended.at // 60), *key))
            if bucket is None:
                bucket = buckets[int(ended.at // 60), *key] = _Counts()
            bucket.add(ended)
            total = totals.get(key)
            if total is None:
                total = totals[key] = _Counts()
                if len(totals) > MAX_TOTALS:
                    totals.popitem(last=False)
            else:
                totals.move_to_end(key)
            total.add(ended)
        self._pending.clear()
        return buckets

    def flush(self) -> None:
        """Add the pending counts to their buckets; forget buckets past the retention."""
        if not self._pending:
            return
        rows = [(*key, *counts.values()) for key, counts in self._tally().items()]
        names = ", ".join(_COLUMNS)
        places = ", ".join("?" * (len(_COLUMNS) + 3))
        added = ", ".join(f"{c} = {c} + excluded.{c}" for c in _COLUMNS)
        oldest = int((self._clock() - RETENTION) // 60)
        with self._db:
            self._db.executemany(
                f"INSERT INTO usage (minute, tenant, model, {names}) VALUES ({places}) "
                f"ON CONFLICT (minute, tenant, model) DO UPDATE SET {added}",
                rows,
            )
            self._db.execute("DELETE FROM usage WHERE minute < ?", (oldest,))
            (count,) = self._db.execute("SELECT COUNT(*) FROM usage").fetchone()
            if count > MAX_BUCKET_ROWS:
                self._db.execute(
                    "DELETE FROM usage WHERE rowid IN "
                    "(SELECT rowid FROM usage ORDER BY minute LIMIT ?)",
                    (count - MAX_BUCKET_ROWS,),
                )

    def report(self, call: p.UsageCall, cluster: Cluster) -> p.UsageReport:
        """The answer to ``call``: its window's rows, busiest first, and who is active."""
        active = activity(cluster)
        if call.lifetime:
            self.flush()
            rows = [_row(*key, counts.values()) for key, counts in self._totals.items()]
            rows.sort(key=lambda r: -(r.prompt_tokens + r.completion_tokens))
            kept = rows[: p.MAX_USAGE_ROWS]
            return p.UsageReport(call.request_id, kept, active, truncated=len(rows) > len(kept))
        self.flush()
        sums = ", ".join(f"SUM({c})" for c in _COLUMNS)
        found = self._db.execute(
            f"SELECT tenant, model, {sums} FROM usage WHERE minute >= ? AND minute <= ? "
            "GROUP BY tenant, model ORDER BY SUM(prompt) + SUM(completion) DESC, tenant, model "
            "LIMIT ?",
            (int(call.start // 60), int(call.end // 60), p.MAX_USAGE_ROWS + 1),
        ).fetchall()
        rows = [_row(tenant, model, values) for tenant, model, *values in found]
        return p.UsageReport(
            call.request_id,
            rows[: p.MAX_USAGE_ROWS],
            active,
            start=call.start,
            end=call.end,
            truncated=len(rows) > p.MAX_USAGE_ROWS,
        )


def activity(cluster: Cluster) -> list[p.Activity]:
    """Each tenant's requests running and waiting now, by model (at most
    ``MAX_USAGE_ROWS``, the busiest)."""
    counts: dict[tuple[str, str], list[int]] = {}
    for flight in cluster.in_flight.values():
        key = (flight.submit.tenant, flight.submit.model_uid)
        counts.setdefault(key, [0, 0])[0] += 1
    for uid in cluster.models:
        for tenant, waiting in cluster.scheduler.tenants(uid).items():
            counts.setdefault((tenant, uid), [0, 0])[1] += waiting
    rows = [p.Activity(t, m, running, waiting) for (t, m), (running, waiting) in counts.items()]
    rows.sort(key=lambda a: (-(a.running + a.waiting), a.tenant, a.model))
    return rows[: p.MAX_USAGE_ROWS]
