"""Fair turns between tenants, driven through the broker's handlers with no socket: one
replica with one slot, so the order in which waiting requests reach it is the schedule."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.broker.recorder import FACADE, Recorder
from xb.core import protocol as p
from xb.core.demo_model import DEMO_MODEL_NAME

pytestmark = pytest.mark.unit
W = b"w"


def ask(
    rec: Recorder, rid: str, tenant: str, priority: p.Priority = "interactive", weight: float = 1
) -> None:
    params = p.GenerateParams(messages=[], max_tokens=16)
    submit = p.Submit(rid, "m", "chat", params, tenant=tenant, priority=priority, weight=weight)
    rec.peer(FACADE, submit)


def served(rec: Recorder, count: int) -> list[str]:
    """Finish the running request ``count`` times; the requests that reached the slot."""
    order: list[str] = []
    for _ in range(count):
        ((_, running),) = rec.requests()
        order.append(running.request_id)
        rec.peer(W, p.Final(running.request_id, "stop", p.Usage(1, 16, 17)))
    return order


def with_one_slot(rec: Recorder) -> Recorder:
    rec.join("w")
    rec.launch()
    ready = p.ReplicaStatus("m-0", "m", DEMO_MODEL_NAME, p.ModelState.READY, slots=1)
    rec.peer(W, p.ModelEvent(ready))
    rec.take()
    return rec


@pytest.fixture
def one_slot(rec: Recorder) -> Recorder:
    return with_one_slot(rec)


def test_a_lone_request_goes_ahead_of_another_tenants_backlog(one_slot: Recorder) -> None:
    for i in range(8):
        ask(one_slot, f"a{i}", "alice")
    ask(one_slot, "b0", "bob")
    assert served(one_slot, 3) == ["a0", "b0", "a1"]


def test_busy_tenants_get_turns_in_proportion_to_their_weights(one_slot: Recorder) -> None:
    for i in range(40):
        ask(one_slot, f"a{i}", "alice", weight=3)
        ask(one_slot, f"b{i}", "bob", weight=1)
    turns = Counter(rid[0] for rid in served(one_slot, 40))
    assert (turns["a"], turns["b"]) == (30, 10)


def sent(rec: Recorder) -> list[tuple[str, p.Priority]]:
    return [(request.request_id, request.priority) for _, request in rec.requests()]


def end(rec: Recorder, request_id: str) -> None:
    rec.peer(W, p.Final(request_id, "stop", p.Usage(1, 16, 17), preemptions=0))


def test_interactive_requests_go_before_any_batch_request(one_slot: Recorder) -> None:
    for i in range(5):
        ask(one_slot, f"e{i}", "eval", priority="batch")
    assert sent(one_slot) == [("e0", "batch")]
    ask(one_slot, "c0", "chat")
    ask(one_slot, "c1", "chat")
    # c0 goes beside e0, which its worker preempts for it; c1 waits: no batch runs there.
    assert sent(one_slot) == [("c0", "interactive")]
    end(one_slot, "c0")  # e0 resumes, and c1 preempts it in turn
    assert sent(one_slot) == [("c1", "interactive")]
    end(one_slot, "c1")
    assert sent(one_slot) == []  # e0 holds the slot again: the other batch requests wait
    end(one_slot, "e0")
    assert sent(one_slot) == [("e1", "batch")]


def test_preempted_requests_are_counted(one_slot: Recorder) -> None:
    ask(one_slot, "e0", "eval", priority="batch")
    ask(one_slot, "c0", "chat")
    end(one_slot, "c0")
    one_slot.peer(W, p.Final("e0", "stop", p.Usage(1, 16, 17), preemptions=1))
    assert one_slot.broker.cluster.stats.preemptions == 1


def test_without_a_batch_request_running_an_interactive_one_waits(one_slot: Recorder) -> None:
    ask(one_slot, "c0", "chat")
    ask(one_slot, "c1", "chat")
    assert sent(one_slot) == [("c0", "interactive")]
    end(one_slot, "c0")
    assert sent(one_slot) == [("c1", "interactive")]


def test_one_shared_tenant_is_served_in_arrival_order(one_slot: Recorder) -> None:
    for i in range(6):
        ask(one_slot, f"r{i}", "")
    assert served(one_slot, 6) == [f"r{i}" for i in range(6)]


def test_a_flooding_tenant_is_refused_for_itself_only(tmp_path: Path) -> None:
    one_slot = with_one_slot(Recorder(tmp_path / "broker.db", max_queue=3))
    for i in range(5):  # one runs, three wait, the fifth is one too many
        ask(one_slot, f"a{i}", "alice")
    refused = [m for m in one_slot.take(FACADE) if isinstance(m, p.Error)]
    assert [(e.request_id, e.code) for e in refused] == [("a4", p.ErrorCode.QUEUE_FULL)]
    assert "tenant 'alice'" in refused[0].message
    ask(one_slot, "b0", "bob")
    assert not [m for m in one_slot.take(FACADE) if isinstance(m, p.Error)]
    assert one_slot.broker.cluster.scheduler.waiting("m") == 4
    one_slot.peer(FACADE, p.Cancel("a2"))
    assert one_slot.broker.cluster.scheduler.waiting("m") == 3
    assert served(one_slot, 4) == ["a0", "b0", "a1", "a3"]
    assert one_slot.broker.cluster.scheduler.waiting("m") == 0
    one_slot.broker.close()


def test_first_come_first_served_stays_selectable(tmp_path: Path) -> None:
    fifo = with_one_slot(Recorder(tmp_path / "broker.db", scheduler="fifo"))
    for i in range(4):
        ask(fifo, f"a{i}", "alice")
    ask(fifo, "b0", "bob")
    assert served(fifo, 5) == ["a0", "a1", "a2", "a3", "b0"]
    fifo.broker.close()


def test_a_tenant_with_nothing_in_flight_goes_beyond_the_slots_of_one_holding_two(
    rec: Recorder,
) -> None:
    rec.join("w")
    rec.launch()
    ready = p.ReplicaStatus("m-0", "m", DEMO_MODEL_NAME, p.ModelState.READY, slots=2)
    rec.peer(W, p.ModelEvent(ready))
    rec.take()
    for i in range(3):
        ask(rec, f"a{i}", "alice")
    assert sent(rec) == [("a0", "interactive"), ("a1", "interactive")]  # a2 waits
    ask(rec, "b0", "bob")  # bob has nothing in flight; alice holds both slots
    (request,) = [r for _, r in rec.requests()] or [None]
    assert request is not None and (request.request_id, request.tenant) == ("b0", "bob")
    ask(rec, "b1", "bob")  # bob has one in flight now: his second waits its turn
    ask(rec, "c0", "carol")  # alice holds two still (one of them preempted): carol too
    assert [r.request_id for _, r in rec.requests()] == ["c0"]
    ask(rec, "d0", "dave")  # four in flight on two slots: no more beyond them
    assert sent(rec) == []


def test_a_tenant_holding_one_slot_is_not_passed_beyond_the_slots(one_slot: Recorder) -> None:
    ask(one_slot, "a0", "alice")
    ask(one_slot, "b0", "bob")
    assert sent(one_slot) == [("a0", "interactive")]
    end(one_slot, "a0")
    assert sent(one_slot) == [("b0", "interactive")]
