"""Quotas and usage per tenant in the broker, with a clock of the test's own and a real
SQLite state file: the windows, what a flush keeps across a restart, and the bounds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.broker.recorder import FACADE, Recorder
from xb.broker import quotas, usage
from xb.broker.quotas import DAY, Quotas
from xb.broker.usage import UsageBook
from xb.core import protocol as p
from xb.core.demo_model import DEMO_MODEL_NAME

pytestmark = pytest.mark.unit
W = b"w"
NOON = 20_000 * DAY + DAY / 2  # a UTC noon


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def submit(rid: str = "r", tenant: str = "alice", **quota: int) -> p.Submit:
    return p.Submit(rid, "m", "chat", p.GenerateParams(messages=[]), tenant=tenant, **quota)


def test_requests_per_minute_is_a_sliding_window() -> None:
    clock = Clock()
    book = Quotas(sqlite3.connect(":memory:"), clock)
    for at in (0, 10):
        clock.now = NOON + at
        assert book.refusal(submit(rpm=2)) is None
        book.admitted(submit(rpm=2))
    clock.now = NOON + 20
    refused = book.refusal(submit(rpm=2))
    assert refused == ("tenant 'alice' has used its 2 requests per minute; retry in 40 s", 40)
    assert book.refusal(submit(tenant="bob", rpm=2)) is None  # Bob has his own count
    assert book.refusal(submit()) is None  # a key without a quota is not counted
    clock.now = NOON + 60.5  # the first left the window; the second holds one place
    assert book.refusal(submit(rpm=2)) is None
    book.admitted(submit(rpm=2))
    assert book.refusal(submit(rpm=2)) == (
        "tenant 'alice' has used its 2 requests per minute; retry in 10 s",
        10,
    )


def test_tokens_per_day_end_at_midnight_utc() -> None:
    clock = Clock()
    book = Quotas(sqlite3.connect(":memory:"), clock)
    assert book.refusal(submit(tokens_per_day=10)) is None
    book.used(submit(tokens_per_day=10), p.Usage(6, 3, 9))
    assert book.refusal(submit(tokens_per_day=10)) is None  # 9 of 10: it may start
    book.used(submit(tokens_per_day=10), p.Usage(6, 3, 9))
    message, wait = book.refusal(submit(tokens_per_day=10)) or ("", 0)
    assert wait == DAY // 2
    assert message == (
        f"tenant 'alice' has used 18 of its 10 tokens per day (UTC); retry in {DAY // 2} s, "
        "after midnight UTC"
    )
    clock.now = NOON + DAY / 2  # midnight
    assert book.refusal(submit(tokens_per_day=10)) is None


def test_counts_written_by_a_flush_survive_a_restart_and_only_those(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "broker.db"
    first = Quotas(sqlite3.connect(path), clock)
    first.admitted(submit(rpm=1))
    assert Quotas(sqlite3.connect(path), clock).refusal(submit(rpm=1)) is None  # not yet written
    first.used(submit(tokens_per_day=5), p.Usage(4, 1, 5))
    first.flush()
    again = Quotas(sqlite3.connect(path), clock)
    assert again.refusal(submit(rpm=1)) is not None
    assert again.refusal(submit(tokens_per_day=5)) is not None
    clock.now += 61  # a minute later the request has left the window, not the tokens the day
    later = Quotas(sqlite3.connect(path), clock)
    assert later.refusal(submit(rpm=1)) is None
    assert later.refusal(submit(tokens_per_day=5)) is not None


def test_tenants_with_quotas_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quotas, "MAX_TENANTS", 3)
    db = sqlite3.connect(tmp_path / "broker.db")
    book = Quotas(db, Clock())
    for name in ("a", "b", "c", "d"):
        book.admitted(submit(tenant=name, rpm=1))
    book.flush()
    assert book.refusal(submit(tenant="a", rpm=1)) is None  # the oldest was forgotten
    assert [row[0] for row in db.execute("SELECT tenant FROM quotas ORDER BY tenant")] == [
        "b",
        "c",
        "d",
    ]


def final(rid: str, prompt: int, completion: int, cached: int = 0, preempted: int = 0) -> p.Final:
    usage = p.Usage(prompt, completion, prompt + completion, cached)
    return p.Final(rid, "stop", usage, preemptions=preempted)


def test_usage_buckets_answer_a_window_after_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "broker.db"
    book = UsageBook(sqlite3.connect(path), clock)
    book.arrived("r1")
    book.dispatched("r1")
    book.finished(submit("r1"), final("r1", 10, 5, cached=4, preempted=1))
    clock.now += 120
    book.finished(submit("r2", tenant="bob"), final("r2", 7, 2))
    book.arrived("r3")
    book.ended("r3")  # cancelled: not counted
    book.flush()
    again = UsageBook(sqlite3.connect(path), clock)
    cluster = Recorder(tmp_path / "other.db").broker.cluster
    everything = again.report(p.UsageCall("q", NOON - 60, clock.now), cluster)
    rows = {r.tenant: r for r in everything.rows}
    assert (rows["alice"].requests, rows["alice"].prompt_tokens, rows["alice"].cached_tokens) == (
        1,
        10,
        4,
    )
    assert (rows["alice"].completion_tokens, rows["alice"].preemptions) == (5, 1)
    assert sum(rows["alice"].waits) == 1 and rows["alice"].queue_wait < 1
    assert rows["bob"].prompt_tokens == 7
    recent = again.report(p.UsageCall("q", clock.now - 30, clock.now), cluster)
    assert [r.tenant for r in recent.rows] == ["bob"]  # alice's minute is outside it
    assert again.report(p.UsageCall("q", 0, 0, lifetime=True), cluster).rows == []


def test_usage_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage, "MAX_BUCKET_ROWS", 3)
    monkeypatch.setattr(usage, "MAX_TOTALS", 2)
    clock = Clock()
    db = sqlite3.connect(tmp_path / "broker.db")
    book = UsageBook(db, clock)
    for minute, user in enumerate(("u1", "u2", "u3", "u4")):
        clock.now = NOON + 60 * minute
        book.finished(submit(tenant=user), final("r", 1, 1))
        book.flush()
    cluster = Recorder(tmp_path / "other.db").broker.cluster
    window = book.report(p.UsageCall("q", 0, clock.now), cluster)
    assert sorted(r.tenant for r in window.rows) == ["u2", "u3", "u4"]  # the oldest minute went
    lifetime = book.report(p.UsageCall("q", lifetime=True), cluster)
    assert sorted(r.tenant for r in lifetime.rows) == ["u3", "u4"]
    clock.now += usage.RETENTION + 60
    book.finished(submit(tenant="u5"), final("r", 1, 1))
    book.flush()
    assert [row[0] for row in db.execute("SELECT tenant FROM usage")] == ["u5"]


def test_the_broker_counts_usage_and_writes_it_on_its_tick(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "broker.db")
    try:
        rec.join("w")
        rec.launch()
        ready = p.ReplicaStatus("m-0", "m", DEMO_MODEL_NAME, p.ModelState.READY, abilities=["chat"])
        rec.peer(W, p.ModelEvent(ready))
        rec.peer(FACADE, submit("busy", rpm=5))
        rec.peer(FACADE, submit("waits", tenant="bob"))
        rec.take()
        rec.peer(FACADE, p.UsageCall("now", lifetime=True))
        (report,) = rec.take(FACADE)
        assert isinstance(report, p.UsageReport)
        assert report.active == [p.Activity("alice", "m", 1, 0), p.Activity("bob", "m", 0, 1)]
        rec.peer(W, final("busy", 3, 2, preempted=2))
        rec.broker.tick(0.0, rec.deliver)
        db = sqlite3.connect(tmp_path / "broker.db")
        assert list(db.execute("SELECT tenant, requests, prompt, preemptions FROM usage")) == [
            ("alice", 1, 3, 2)
        ]
        assert [row[0] for row in db.execute("SELECT tenant FROM quotas")] == ["alice"]
    finally:
        rec.broker.close()
