"""The first-come-first-served scheduler: what waits, in which order, and where it goes."""

from __future__ import annotations

import random

import pytest

from xb.broker.affinity import Affinity
from xb.broker.routing import LeastLoaded
from xb.broker.scheduler import FirstComeFirstServed
from xb.broker.table import Model, Queued, Replica
from xb.core import protocol as p

pytestmark = pytest.mark.unit


def model(*replicas: str, slots: int = 1) -> Model:
    m = Model(p.ModelSpec("m", "demo"), wanted=len(replicas), created=0)
    for name in replicas:
        m.replicas[name] = Replica(name, "m", name.encode(), p.ModelState.READY, slots=slots)
    return m


def entry(rid: str, client: bytes = b"c", keys: list[str] | None = None, avoid: str = "") -> Queued:
    submit = p.Submit(rid, "m", "chat", p.GenerateParams(messages=[]), prefix_keys=keys or [])
    return Queued(client, submit, retried=bool(avoid), avoid=avoid)


def scheduler(max_queue: int = 8, affinity: Affinity | None = None) -> FirstComeFirstServed:
    return FirstComeFirstServed(LeastLoaded(random.Random(0)), affinity or Affinity(), max_queue)


def served(s: FirstComeFirstServed, m: Model) -> list[tuple[str, str]]:
    """Assignments until none is left, each slot taken as the broker takes it."""
    out = []
    while (assignment := s.next(m)) is not None:
        queued, replica = assignment
        replica.in_flight += 1
        out.append((queued.submit.request_id, replica.replica_id))
    return out


def test_requests_go_in_arrival_order_until_the_slots_are_full() -> None:
    s, m = scheduler(), model("a", "b")
    for rid in ("r1", "r2", "r3"):
        assert s.admit(m, entry(rid)) is None
    first = served(s, m)
    assert [rid for rid, _ in first] == ["r1", "r2"]
    assert {replica for _, replica in first} == {"a", "b"}
    assert s.waiting("m") == 1
    m.replicas["a"].in_flight = 0  # a's request ended
    assert served(s, m) == [("r3", "a")]
    assert s.waiting("m") == 0 and s.next(m) is None


def test_the_queue_bound_refuses_with_a_reason() -> None:
    s, m = scheduler(max_queue=2), model()
    assert s.admit(m, entry("r1")) is None and s.admit(m, entry("r2")) is None
    refusal = s.admit(m, entry("r3"))
    assert refusal is not None and "2 requests waiting" in refusal
    assert s.waiting("m") == 2


def test_a_conversation_goes_back_to_its_replica_and_a_retry_avoids_its_own() -> None:
    affinity = Affinity()
    affinity.remember("conv", "b")
    s, m = scheduler(affinity=affinity), model("a", "b", slots=4)
    s.admit(m, entry("chat", keys=["conv"]))
    s.requeue(m, entry("retry", avoid="a"))  # ahead of the chat
    assert served(s, m)[:2] == [("retry", "b"), ("chat", "b")]


def test_cancel_withdraw_and_drain_take_requests_off() -> None:
    s, m = scheduler(), model()
    for rid, client in (("r1", b"x"), ("r2", b"y"), ("r3", b"x"), ("r4", b"z")):
        s.admit(m, entry(rid, client))
    cancelled = s.cancel("r2")
    assert cancelled is not None and cancelled.submit.request_id == "r2"
    assert s.cancel("r2") is None
    s.withdraw(b"x")
    assert [e.submit.request_id for e in s.drain("m")] == ["r4"]
    assert s.waiting("m") == 0 and s.drain("m") == []
