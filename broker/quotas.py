"""Quotas per tenant: requests per minute and tokens per UTC day, checked and counted by
the broker, so that every facade in front of it shares the same counts.

A SUBMIT carries its tenant's quotas (from the API key, ``p.Submit.rpm`` and
``tokens_per_day``; 0: none). Windows:

* requests per minute: a sliding 60 s window. A request is counted when the broker
  queues it; one that arrives while ``rpm`` requests were queued in the last 60 s is
  refused, with the seconds until the oldest of them leaves the window.
* tokens per day: prompt and completion tokens of the requests that ended with FINAL,
  per UTC day (it starts again at 00:00 UTC). A request is refused once the day's count
  has reached the quota; one that starts under it runs to its end, even past it.

Counts are in memory and written to the broker's state file on its periodic tick (every
heartbeat interval) and when it stops, so a restarted broker keeps them; a broker that
crashes loses at most one tick's counts. Wall-clock time, not monotonic time: the windows
must mean the same after a restart. Tenants are bounded (``MAX_TENANTS``): the least
recently seen are forgotten first.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from xb.core import protocol as p

WINDOW = 60.0  # seconds of the requests-per-minute window
DAY = 86_400
MAX_TENANTS = 4096  # tenants with a quota whose counts are kept
_times = msgspec.msgpack.Decoder(list[float])
_encode = msgspec.msgpack.Encoder().encode


@dataclass
class _Counts:
    recent: deque[float] = field(default_factory=deque)  # when its requests were counted
    day: int = 0  # the UTC day of ``tokens``, in days since the epoch
    tokens: int = 0


class Quotas:
    """``db``: the state file's connection (only the broker's thread uses it); ``clock``:
    wall-clock seconds, a test's own."""

    def __init__(self, db: sqlite3.Connection, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._counts: OrderedDict[str, _Counts] = OrderedDict()
        self._dirty: set[str] = set()
        with db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS quotas "
                "(tenant TEXT PRIMARY KEY, recent BLOB, day INTEGER, tokens INTEGER)"
            )
        self._load()

    def _load(self) -> None:
        now = self._clock()
        rows = self._db.execute(
            "SELECT tenant, recent, day, tokens FROM quotas ORDER BY rowid DESC LIMIT ?",
            (MAX_TENANTS,),
        )
        for tenant, recent, day, tokens in reversed(list(rows)):
            try:
                times = [t for t in _times.decode(recent) if t > now - WINDOW]
            except (msgspec.DecodeError, msgspec.ValidationError):
                times = []
            self._counts[tenant] = _Counts(deque(sorted(times)), int(day), int(tokens))

    def _of(self, tenant: str) -> _Counts:
        counts = self._counts.get(tenant)
        if counts is None:
            counts = self._counts[tenant] = _Counts()
            while len(self._counts) > MAX_TENANTS:
                gone, _ = self._counts.popitem(last=False)
                self._dirty.add(gone)  # its row goes at the next flush
        else:
            self._counts.move_to_end(tenant)
        return counts

    def refusal(self, submit: p.Submit) -> tuple[str, int] | None:
        """Why ``submit`` is over its tenant's quota, and in how many seconds it may be
        retried; None when it may go."""
        if not submit.rpm and not submit.tokens_per_day:
            return None
        now = self._clock()
        counts = self._of(submit.tenant)
        who = f"tenant {submit.tenant!r}" if submit.tenant else "this caller"
        if submit.rpm:
            recent = counts.recent
            while recent and recent[0] <= now - WINDOW:
                recent.popleft()
            if len(recent) >= submit.rpm:
                # The oldest that must leave the window for one more to fit.
                oldest = recent[len(recent) - submit.rpm]
                wait = max(math.ceil(oldest + WINDOW - now), 1)
                return (
                    f"{who} has used its {submit.rpm} requests per minute; retry in {wait} s"
                ), wait
        if submit.tokens_per_day:
            today = int(now // DAY)
            if counts.day == today and counts.tokens >= submit.tokens_per_day:
                wait = max(math.ceil((today + 1) * DAY - now), 1)
                return (
                    f"{who} has used {counts.tokens} of its {submit.tokens_per_day} tokens per "
                    f"day (UTC); retry in {wait} s, after midnight UTC"
                ), wait
        return None

    def admitted(self, submit: p.Submit) -> None:
        """Count ``submit`` against its tenant's requests per minute."""
        if submit.rpm:
            self._of(submit.tenant).recent.append(self._clock())
            self._dirty.add(submit.tenant)

    def used(self, submit: p.Submit, usage: p.Usage) -> None:
        """Count a finished request's tokens against its tenant's tokens per day."""
        if not submit.tokens_per_day:
            return
        counts = self._of(submit.tenant)
        today = int(self._clock() // DAY)
        if counts.day != today:
            counts.day, counts.tokens = today, 0
        counts.tokens += usage.prompt_tokens + usage.completion_tokens
        self._dirty.add(submit.tenant)

    def flush(self) -> None:
        """Write the counts that changed since the last flush."""
        if not self._dirty:
            return
        now = self._clock()
        rows, gone = [], []
        for tenant in self._dirty:
            counts = self._counts.get(tenant)
            if counts is None:
                gone.append((tenant,))
                continue
            recent = [t for t in counts.recent if t > now - WINDOW]
            rows.append((tenant, _encode(recent), counts.day, counts.tokens))
        self._dirty.clear()
        with self._db:
            self._db.executemany("DELETE FROM quotas WHERE tenant = ?", gone)
            self._db.executemany(
                "INSERT OR REPLACE INTO quotas (tenant, recent, day, tokens) VALUES (?, ?, ?, ?)",
                rows,
            )
