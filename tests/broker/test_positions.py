"""Where waiting requests stand in line: the schedulers' ``order`` and ``position`` against
the order they really serve in, and the QUEUED messages the broker sends, driven through
its handlers with no socket."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.broker.recorder import FACADE, Recorder
from tests.broker.test_fairshare import served, with_one_slot
from xb.broker import positions
from xb.broker.affinity import Affinity
from xb.broker.fairshare import FairShare
from xb.broker.routing import LeastLoaded
from xb.broker.scheduler import FirstComeFirstServed, Scheduler
from xb.broker.table import Model, Queued, Replica
from xb.core import protocol as p

pytestmark = pytest.mark.unit
W = b"w"
SCHEDULERS = ["fair", "fifo"]


def submit(
    rid: str,
    tenant: str = "",
    priority: p.Priority = "interactive",
    weight: float = 1,
    max_tokens: int = 16,
    positions: bool = True,
) -> p.Submit:
    params = p.GenerateParams(messages=[], max_tokens=max_tokens)
    return p.Submit(
        rid,
        "m",
        "chat",
        params,
        tenant=tenant,
        priority=priority,
        weight=weight,
        positions=positions,
    )


def random_submit(rng: random.Random, rid: str) -> p.Submit:
    return submit(
        rid,
        tenant=rng.choice(["", "alice", "bob", "carol"]),
        priority=rng.choice(["interactive", "interactive", "batch"]),
        weight=rng.choice([1, 2, 5]),
        max_tokens=rng.choice([8, 64, 512]),
    )


def queued(rec: Recorder) -> list[tuple[str, int]]:
    return [(m.request_id, m.position) for m in rec.take(FACADE) if isinstance(m, p.Queued)]


def tick(rec: Recorder, now: float) -> None:
    """The positions part of the broker's tick, at monotonic time ``now``."""
    rec.broker.positions.tick(now, rec.broker.interval)
    rec.broker.flush(rec.deliver)


@pytest.fixture(params=SCHEDULERS)
def one_slot(request: pytest.FixtureRequest, tmp_path: Path) -> Recorder:
    rec = Recorder(tmp_path / "broker.db", scheduler=request.param)
    return with_one_slot(rec)


# ---- order and position against what is served ------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_the_order_is_the_order_requests_are_served_in(one_slot: Recorder, seed: int) -> None:
    rng = random.Random(seed)
    one_slot.peer(FACADE, submit("running"))
    for i in range(30):
        one_slot.peer(FACADE, random_submit(rng, f"r{i}"))
    scheduler = one_slot.broker.cluster.scheduler
    order = [entry.submit.request_id for entry in scheduler.order("m")]
    assert sorted(order) == sorted(f"r{i}" for i in range(30))
    assert [scheduler.position("m", rid) for rid in order] == list(range(1, 31))
    assert scheduler.position("m", "running") is None
    assert scheduler.position("other", "r0") is None
    assert served(one_slot, 31) == ["running", *order]


def model_with_room() -> Model:
    m = Model(p.ModelSpec("m", "demo"), wanted=1, created=0)
    m.replicas["m-0"] = Replica("m-0", "m", b"w", p.ModelState.READY, slots=1000)
    return m


@pytest.mark.parametrize("kind", [FairShare, FirstComeFirstServed])
@pytest.mark.parametrize("seed", range(20))
def test_retried_requests_keep_order_and_position_in_step(
    kind: type[FairShare] | type[FirstComeFirstServed], seed: int
) -> None:
    # A retry goes back at the head of its queue with the lane's current tag, which may
    # be later than the tags behind it: position must follow the order ``next`` keeps.
    rng = random.Random(seed)
    scheduler: Scheduler = kind(LeastLoaded(random.Random(seed)), Affinity(), 1000)
    m = model_with_room()
    count = 0
    for _ in range(6):
        for _ in range(rng.randint(1, 8)):
            assert scheduler.admit(m, Queued(FACADE, random_submit(rng, f"r{count}"))) is None
            count += 1
        taken = []
        for _ in range(rng.randint(0, 4)):
            assignment = scheduler.next(m)
            if assignment is not None:
                taken.append(assignment[0])
        for entry in taken:
            if rng.random() < 0.7:
                scheduler.requeue(m, entry._replace(retried=True, avoid="m-1"))
    order = [entry.submit.request_id for entry in scheduler.order("m")]
    assert [scheduler.position("m", rid) for rid in order] == list(range(1, len(order) + 1))
    handed_out = []
    while (assignment := scheduler.next(m)) is not None:
        handed_out.append(assignment[0].submit.request_id)
    assert handed_out == order


# ---- the messages -----------------------------------------------------------------------


def test_a_request_that_waits_is_told_its_place_at_once(one_slot: Recorder) -> None:
    one_slot.peer(FACADE, submit("running"))
    one_slot.peer(FACADE, submit("b"))
    one_slot.peer(FACADE, submit("c"))
    one_slot.peer(FACADE, submit("d", positions=False))  # an older facade, or no stream
    assert queued(one_slot) == [("b", 1), ("c", 2)]


def test_places_that_change_are_told_on_the_tick_at_most_once_an_interval(
    one_slot: Recorder,
) -> None:
    interval = one_slot.broker.interval
    one_slot.peer(FACADE, submit("running"))
    for rid in "bcd":
        one_slot.peer(FACADE, submit(rid))
    now = one_slot.broker.positions.told["d"][1]
    one_slot.take(FACADE)
    assert served(one_slot, 1) == ["running"]  # b runs now; c and d move up
    assert queued(one_slot) == []  # a dispatch costs no message
    tick(one_slot, now + interval / 2)
    assert queued(one_slot) == []  # told less than an interval ago
    tick(one_slot, now + interval)
    assert queued(one_slot) == [("c", 1), ("d", 2)]
    tick(one_slot, now + 3 * interval)
    assert queued(one_slot) == []  # nothing changed
    assert set(one_slot.broker.positions.told) == {"c", "d"}
    one_slot.peer(FACADE, p.Cancel("c"))
    tick(one_slot, now + 4 * interval)
    assert queued(one_slot) == [("d", 1)]
    assert set(one_slot.broker.positions.told) == {"d"}  # what left the queue is forgotten


def test_a_tick_sends_a_bounded_number_nearest_the_front_first(
    one_slot: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(positions, "MAX_UPDATES", 3)
    one_slot.peer(FACADE, submit("running"))
    for i in range(8):
        one_slot.peer(FACADE, submit(f"r{i}"))
    now = max(at for _, at in one_slot.broker.positions.told.values())
    served(one_slot, 1)
    one_slot.take()
    tick(one_slot, now + 10)
    assert queued(one_slot) == [("r1", 1), ("r2", 2), ("r3", 3)]
    tick(one_slot, now + 20)
    assert queued(one_slot) == [("r4", 4), ("r5", 5), ("r6", 6)]


def test_what_does_not_wait_is_not_told(tmp_path: Path) -> None:
    rec = with_one_slot(Recorder(tmp_path / "broker.db", max_queue=1))
    rec.peer(FACADE, submit("first"))  # runs at once
    rec.peer(FACADE, submit("second"))  # waits
    rec.peer(FACADE, submit("third"))  # one too many: refused
    rec.peer(FACADE, p.Submit("u", "unknown", "chat", p.GenerateParams(), positions=True))
    told = [(type(m).__name__, m.request_id) for m in rec.take(FACADE)]
    assert told == [("Queued", "second"), ("Error", "third"), ("Error", "u")]
    assert set(rec.broker.positions.told) == {"second"}
    rec.broker.close()
