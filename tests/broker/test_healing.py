"""Self-healing, retries and bounds, driven through ``Broker.process`` with the frames
peers send; what the broker sends is recorded instead of going out on its socket."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.broker.recorder import FACADE, GIB, Recorder
from xb.broker import state
from xb.broker.heal import MAX_RESTARTS
from xb.core import protocol as p
from xb.core.demo_model import DEMO_MODEL_NAME

pytestmark = pytest.mark.unit


def submit(rid: str, uid: str = "m") -> p.Submit:
    return p.Submit(rid, uid, "chat", p.GenerateParams(messages=[]))


def later(seconds: float) -> float:
    return time.monotonic() + seconds


def test_a_replica_lost_with_its_worker_is_placed_again(rec: Recorder) -> None:
    a, b = rec.join("a"), rec.join("b")
    assert isinstance(rec.launch(replica=2), p.ModelInfo)
    placed = dict((rid, who) for who, rid in rec.launches())
    assert sorted(placed.values()) == [a, b]
    for rid, who in placed.items():
        rec.ready(who, rid)
    rec.take()
    # A request is running on a's replica, before its first token, when a goes away.
    rec.peer(FACADE, submit("r1"))
    ((first, _),) = rec.requests()
    rec.peer(first, p.Disconnect("gone"))
    # It is retried on the other replica at once, and counted.
    ((second, again),) = rec.requests()
    assert second != first and again.request_id == "r1" and rec.broker.stats().retries == 1
    rec.take()
    # The next reconcile places the lost replica on the worker left.
    rec.reconcile(later(0))
    ((where, new_id),) = rec.launches()
    assert where == second and new_id == "m-2" and rec.broker.stats().replacements == 1
    rec.ready(second, new_id)
    rec.take()
    # The lost worker comes back with its replica still running: one replica too many,
    # so the least useful (the idle one of those ready, here) stops.
    lost = next(rid for rid, who in placed.items() if who == first)
    status = p.ReplicaStatus(lost, "m", DEMO_MODEL_NAME, p.ModelState.READY, slots=1)
    rec.join(first.decode(), [status])
    stopped = [(w, m.replica_id) for w, m in rec.sent if isinstance(m, p.Terminate)]
    assert len(stopped) == 1
    model = rec.broker.cluster.models["m"]
    assert len(model.replicas) == 2 and stopped[0][1] not in model.replicas


def test_a_failed_replica_starts_again_with_backoff_then_is_given_up(rec: Recorder) -> None:
    w = rec.join("w")
    rec.launch()
    ((_, rid),) = rec.launches()
    rec.ready(w, rid)
    rec.take()
    model = rec.broker.cluster.models["m"]
    waits = []
    for attempt in range(1, MAX_RESTARTS + 1):
        rec.fail(w, rid)
        assert [type(m) for m in rec.take(w)] == [p.Terminate]
        assert not model.replicas and rec.broker.stats().restarts == attempt - 1
        waits.append(round(model.retry_at - time.monotonic()))
        rec.reconcile(time.monotonic())  # too early: nothing yet
        assert not rec.launches()
        rec.reconcile(model.retry_at + 0.01)
        ((_, rid),) = rec.launches()
        assert (rec.broker.stats().restarts, rec.broker.stats().replacements) == (attempt, 0)
        rec.take()
        rec.ready(w, rid)
    assert waits == [1, 2, 4, 8, 16]
    # One failure more than allowed: the replica stays failed, with the reason.
    rec.fail(w, rid)
    assert not [m for m in rec.take(w) if isinstance(m, p.Terminate)]
    (replica,) = model.replicas.values()
    assert replica.state == p.ModelState.FAILED
    assert replica.error is not None and replica.error.startswith("gave up after 5 restarts")
    rec.reconcile(later(3600))
    assert not rec.launches()
    # A request for it now ends at once with a clear error.
    rec.peer(FACADE, submit("late"))
    (error,) = rec.take(FACADE)
    assert isinstance(error, p.Error) and error.code == p.ErrorCode.NO_REPLICA


def test_a_request_failing_before_its_first_token_is_retried_once(rec: Recorder) -> None:
    a, b = rec.join("a"), rec.join("b")
    rec.launch(replica=2)
    for who, rid in rec.launches():
        rec.ready(who, rid)
    rec.take()
    rec.peer(FACADE, submit("r"))
    ((first, _),) = rec.requests()
    rec.peer(first, p.Error("r", p.ErrorCode.MODEL_FAILED, "model process exited"))
    ((second, _),) = rec.requests()
    assert second != first and not rec.take(FACADE)
    # A second failure reaches the client.
    rec.peer(second, p.Error("r", p.ErrorCode.MODEL_FAILED, "model process exited"))
    (error,) = rec.take(FACADE)
    assert isinstance(error, p.Error) and error.code == p.ErrorCode.MODEL_FAILED
    # A request that streamed a token is never retried.
    rec.take()
    rec.peer(FACADE, submit("s"))
    ((where, _),) = rec.requests()
    rec.peer(where, p.Partial("s", "hi", 1))
    rec.peer(where, p.Error("s", p.ErrorCode.MODEL_FAILED, "model process exited"))
    sent = rec.take(FACADE)
    assert [type(m) for m in sent] == [p.Partial, p.Error]
    assert {a, b} >= {first, second} and rec.broker.stats().retries == 1


def test_a_restarted_broker_restores_what_users_launched(tmp_path: Path) -> None:
    state = tmp_path / "broker.db"
    rec = Recorder(state)
    w = rec.join("w")
    rec.launch(replica=2, limits=3)
    for who, rid in rec.launches():
        rec.ready(who, rid)
    rec.broker.close()
    # The broker restarts. Its worker still runs one of the replicas (the other was lost
    # meanwhile) and one replica of a model nobody launched.
    rec = Recorder(state)
    model = rec.broker.cluster.models["m"]
    assert (model.wanted, model.request_limits, model.need) == (2, 3, GIB)
    # A request that comes before the workers are back waits for them.
    rec.peer(FACADE, submit("early"))
    assert not rec.take(FACADE)
    kept = p.ReplicaStatus("m-0", "m", DEMO_MODEL_NAME, p.ModelState.READY, slots=1)
    stray = p.ReplicaStatus("x-0", "x", "x", p.ModelState.READY, slots=1)
    rec.join(w.decode(), [kept, stray])
    assert [m.request_id for _, m in rec.requests()] == ["early"]
    assert [(type(m), getattr(m, "replica_id", "")) for m in rec.take(w)] == [(p.Terminate, "x-0")]
    rec.peer(w, p.Final("early", "stop", p.Usage(1, 1, 2)))
    assert [type(m) for m in rec.take(FACADE)] == [p.Final]
    assert list(model.replicas) == ["m-0"] and "x" not in rec.broker.cluster.models
    # Missing replicas wait for workers to come back first ...
    rec.reconcile(time.monotonic())
    assert not rec.launches()
    # ... then are placed, under a replica id never used before.
    rec.reconcile(later(10))
    assert [rid for _, rid in rec.launches()] == ["m-2"]
    # The launch settings came back too.
    for i in range(3):
        rec.peer(FACADE, submit(f"r{i}"))
    rec.peer(FACADE, submit("over"))
    errors = [m for m in rec.take(FACADE) if isinstance(m, p.Error)]
    assert [e.code for e in errors] == [p.ErrorCode.QUEUE_FULL]
    # A terminated model is gone from the state as well.
    rec.peer(FACADE, p.TerminateModel("t", "m"))
    rec.broker.close()
    rec = Recorder(state)
    assert not rec.broker.cluster.models
    rec.broker.close()


def test_replica_counts_and_list_replies_are_bounded(rec: Recorder) -> None:
    rec.join("w")
    refused = rec.launch(replica=100_000)
    assert isinstance(refused, p.Error) and refused.code == p.ErrorCode.INVALID_REQUEST
    assert str(p.MAX_REPLICAS) in refused.message
    for i in range(p.PAGE_SIZE + 20):
        assert isinstance(rec.launch(uid=f"m{i}", need=1), p.ModelInfo)
    rec.peer(FACADE, p.ListModels("q", limit=10**9))
    (page,) = rec.take(FACADE)
    assert isinstance(page, p.ModelList)
    assert (len(page.models), page.total) == (p.PAGE_SIZE, p.PAGE_SIZE + 20)
    rec.peer(FACADE, p.ListModels("q", offset=p.PAGE_SIZE))
    (rest,) = rec.take(FACADE)
    assert isinstance(rest, p.ModelList) and len(rest.models) == 20
    assert sum(len(p.encode(m)[2]) for m in (page,)) < p.MAX_BODY_BYTES
    rec.peer(FACADE, p.ScaleModel("s", "m0", 10**6))
    (error,) = rec.take(FACADE)
    assert isinstance(error, p.Error) and error.code == p.ErrorCode.INVALID_REQUEST


def test_a_request_a_worker_cannot_take_ends_and_frees_its_slot(rec: Recorder) -> None:
    w = rec.join("w")
    rec.launch()
    ((_, rid),) = rec.launches()
    rec.ready(w, rid)
    rec.take()
    rec.full.add(w)  # the worker stopped reading: its queue is full
    rec.peer(FACADE, submit("r"))
    (error,) = rec.take(FACADE)
    assert isinstance(error, p.Error) and error.code == p.ErrorCode.WORKER_LOST
    replica = rec.broker.cluster.models["m"].replicas[rid]
    assert replica.in_flight == 0 and "r" not in rec.broker.cluster.in_flight
    rec.full.clear()
    rec.peer(FACADE, submit("r2"))
    assert [m.request_id for _, m in rec.requests()] == ["r2"]


def test_a_request_sent_to_a_worker_whose_connection_just_closed_goes_elsewhere(
    rec: Recorder,
) -> None:
    a, b = rec.join("a"), rec.join("b")
    rec.launch(replica=2)
    for who, rid in rec.launches():
        rec.ready(who, rid)
    rec.take()
    rec.closed.add(a)
    # Each request the broker tries on a goes to b instead; a is dropped afterwards.
    for i in range(2):
        rec.peer(FACADE, submit(f"r{i}"))
        if a not in rec.broker.cluster.workers:
            break
    assert a not in rec.broker.cluster.workers and not rec.take(FACADE)
    assert {m.request_id for _, m in rec.requests()} <= {"r0", "r1"}
    assert all(f.worker == b for f in rec.broker.cluster.in_flight.values())
    replica = next(iter(rec.broker.cluster.models["m"].replicas.values()))
    assert replica.in_flight == len(rec.broker.cluster.in_flight)


def test_a_launch_onto_a_worker_whose_connection_just_closed_is_placed_again(
    rec: Recorder,
) -> None:
    a = rec.join("a")
    rec.closed.add(a)
    rec.launch()
    # The worker is gone once the launch is handled; its replica with it.
    assert a not in rec.broker.cluster.workers and not rec.broker.cluster.models["m"].replicas
    b = rec.join("b")
    rec.take()
    rec.reconcile(later(0))
    assert [who for who, _ in rec.launches()] == [b]


def test_a_replica_its_worker_stops_reporting_is_placed_again(rec: Recorder) -> None:
    w = rec.join("w")
    rec.launch()
    ((_, rid),) = rec.launches()
    rec.ready(w, rid)
    rec.take()
    replica = rec.broker.cluster.models["m"].replicas[rid]
    replica.since -= 10  # placed a while ago
    rec.peer(w, p.Heartbeat(p.Memory(64 * GIB, 64 * GIB), []))  # it does not list it
    rec.reconcile(later(0))
    assert rid not in rec.broker.cluster.models["m"].replicas
    rec.reconcile(later(1))  # the next round places it
    ((_, again),) = rec.launches()
    assert again != rid and rec.broker.stats().replacements == 1


def test_requests_wait_while_a_lost_replica_is_placed_again(rec: Recorder) -> None:
    a, b = rec.join("a"), rec.join("b")
    rec.launch(replica=1)
    ((where, rid),) = rec.launches()
    rec.ready(where, rid)
    rec.take()
    rec.peer(where, p.Disconnect("bye"))
    rec.peer(FACADE, submit("waits"))
    assert not rec.take(FACADE)  # queued, not refused
    rec.reconcile(later(0))
    ((other, new),) = rec.launches()
    assert other != where and other in (a, b)
    rec.ready(other, new)
    assert [m.request_id for _, m in rec.requests()] == ["waits"]


def test_a_returning_worker_whose_replica_id_is_taken_stops_its_copy(rec: Recorder) -> None:
    a, b = rec.join("a"), rec.join("b")
    rec.launch(replica=2)
    placed = {who: rid for who, rid in rec.launches()}
    for who, rid in placed.items():
        rec.ready(who, rid)
    rec.take()
    # b reports a's replica id as its own (a relaunch while b was cut off, say).
    status = p.ReplicaStatus(placed[a], "m", DEMO_MODEL_NAME, p.ModelState.READY, slots=1)
    rec.peer(b, p.ModelEvent(status))
    assert [(type(m), m.replica_id) for m in rec.take(b)] == [(p.Terminate, placed[a])]  # type: ignore[attr-defined]
    assert rec.broker.cluster.models["m"].replicas[placed[a]].worker == a


def test_a_scale_down_supersedes_a_scale_up_still_loading(rec: Recorder) -> None:
    w = rec.join("w")
    rec.launch()
    ((_, first),) = rec.launches()
    rec.ready(w, first)
    rec.take()
    rec.peer(b"scaler", p.ScaleModel("up", "m", 4))
    assert len(rec.launches()) == 3 and not rec.take(b"scaler")  # loading: no answer yet
    rec.take()
    rec.peer(FACADE, p.ScaleModel("down", "m", 2))
    (superseded,) = rec.take(b"scaler")
    assert isinstance(superseded, p.Error) and superseded.code == p.ErrorCode.CANCELLED
    (info,) = rec.take(FACADE)
    assert isinstance(info, p.ModelInfo) and info.replica == 2
    model = rec.broker.cluster.models["m"]
    assert model.wanted == 2 and len(model.replicas) == 2 and first in model.replicas
    rec.broker.close()
    assert rec.broker.state.path is not None
    again = Recorder(rec.broker.state.path)  # the count kept on disk is the one asked last
    try:
        assert again.broker.cluster.models["m"].wanted == 2
    finally:
        again.broker.close()


def test_a_model_launched_again_after_termination_never_reuses_a_replica_id(
    tmp_path: Path,
) -> None:
    rec = Recorder(tmp_path / "broker.db")
    rec.join("a")
    rec.launch(replica=2)
    first = sorted(rid for _, rid in rec.launches())
    rec.take()
    rec.peer(FACADE, p.TerminateModel("t", "m"))
    rec.take()
    rec.launch(replica=1)
    (second,) = [rid for _, rid in rec.launches()]
    assert first == ["m-0", "m-1"] and second == "m-2"
    rec.peer(FACADE, p.TerminateModel("t", "m"))
    rec.broker.close()
    # A broker restarted on the same state goes on counting from there.
    rec = Recorder(tmp_path / "broker.db")
    rec.join("a")
    rec.launch(replica=1)
    assert [rid for _, rid in rec.launches()] == ["m-3"]
    rec.broker.close()


def test_a_replica_of_an_earlier_launch_is_not_taken_back(rec: Recorder) -> None:
    a = rec.join("a")
    rec.launch(replica=1)
    rec.ready(a, "m-0")
    rec.peer(FACADE, p.TerminateModel("t", "m"))
    rec.take()
    rec.launch(replica=1)  # m-1, maybe with other settings
    rec.take()
    # A worker that was cut off comes back still running the old m-0.
    old = p.ReplicaStatus("m-0", "m", DEMO_MODEL_NAME, p.ModelState.READY, slots=1)
    rec.join("b", [old])
    assert [(type(m), m.replica_id) for m in rec.take(b"b")] == [(p.Terminate, "m-0")]  # type: ignore[attr-defined]
    assert "m-0" not in rec.broker.cluster.models["m"].replicas


def test_the_kept_replica_indexes_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "MAX_RETIRED", 2)
    saved = state.DesiredState(tmp_path / "broker.db")
    for n, uid in enumerate(("x", "y", "z")):
        saved.forget(uid, 10 + n)
    saved.forget("y", 20)  # retired again: the newest
    assert [saved.next_index(uid) for uid in ("x", "y", "z")] == [0, 20, 12]
    saved.close()
