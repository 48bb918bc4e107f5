"""Every wire command a peer sends the broker, driven through its handler tables with no
socket: one row per command and outcome, asserting what the broker sends in answer.

The cluster of each row: worker ``w`` with model ``m`` ready on replica ``m-0`` (one
slot), and facade ``FACADE``; request ``busy`` is running on ``m-0``, ``queued`` waits.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.broker.recorder import FACADE, GIB, Recorder
from xb.core import protocol as p
from xb.core.demo_model import DEMO_MODEL_NAME

pytestmark = pytest.mark.unit
W = b"w"
E = p.ErrorCode
SPEC = p.ModelSpec("n", DEMO_MODEL_NAME)


def submit(rid: str, uid: str = "m", kind: p.Kind = "chat") -> p.Submit:
    return p.Submit(rid, uid, kind, p.GenerateParams(messages=[]), tenant="t", rpm=3)


@pytest.fixture
def cluster(rec: Recorder) -> Recorder:
    recorder = rec
    recorder.join("w")
    recorder.launch()
    abilities = ["chat", "generate"]
    ready = p.ReplicaStatus("m-0", "m", DEMO_MODEL_NAME, p.ModelState.READY, abilities=abilities)
    recorder.peer(W, p.ModelEvent(ready))
    recorder.peer(FACADE, submit("busy"))
    recorder.peer(FACADE, submit("queued"))
    recorder.take()
    return recorder


def sent(rec: Recorder) -> list[tuple[bytes, str, str]]:
    """What the broker sent: (to whom, message type, its error code or request id)."""
    out = []
    for who, message in rec.sent:
        detail = getattr(message, "code", None) or getattr(message, "request_id", "")
        out.append((who, type(message).__name__, str(detail)))
    rec.sent.clear()
    return out


Row = tuple[str, bytes, p.Message, list[tuple[bytes, str, str]]]
ROWS: list[Row] = [
    # facades
    ("SUBMIT waits for the busy slot", FACADE, submit("r"), []),
    ("SUBMIT for an unknown model", FACADE, submit("r", "x"), [(FACADE, "Error", E.UNKNOWN_MODEL)]),
    ("SUBMIT the model cannot do", FACADE, submit("r", kind="embedding"),
     [(FACADE, "Error", E.INVALID_REQUEST)]),
    ("CANCEL a running request", FACADE, p.Cancel("busy"), [(W, "Cancel", "busy")]),
    ("CANCEL a waiting request", FACADE, p.Cancel("queued"), [(FACADE, "Error", E.CANCELLED)]),
    ("CANCEL an unknown request", FACADE, p.Cancel("nobody"), []),
    ("LAUNCH_MODEL placed", FACADE, p.LaunchModel("l", SPEC, wait_ready=False, need=GIB),
     [(W, "Launch", ""), (FACADE, "ModelInfo", "l")]),
    ("LAUNCH_MODEL of a running uid", FACADE, p.LaunchModel("l", p.ModelSpec("m", DEMO_MODEL_NAME)),
     [(FACADE, "Error", E.DUPLICATE_MODEL)]),
    ("LAUNCH_MODEL too big for any worker", FACADE, p.LaunchModel("l", SPEC, need=1 << 50),
     [(FACADE, "Error", E.LAUNCH_REFUSED)]),
    ("LAUNCH_MODEL on an unknown worker", FACADE, p.LaunchModel("l", SPEC, worker="x"),
     [(FACADE, "Error", E.UNKNOWN_WORKER)]),
    ("TERMINATE_MODEL ends what runs and waits", FACADE, p.TerminateModel("t", "m"),
     [(W, "Terminate", ""), (FACADE, "Error", E.UNKNOWN_MODEL), (FACADE, "Error", E.UNKNOWN_MODEL),
      (FACADE, "Ack", "t")]),
    ("TERMINATE_MODEL unknown", FACADE, p.TerminateModel("t", "x"),
     [(FACADE, "Error", E.UNKNOWN_MODEL)]),
    ("SCALE up", FACADE, p.ScaleModel("s", "m", 2), [(W, "Launch", "")]),
    ("SCALE past the bound", FACADE, p.ScaleModel("s", "m", p.MAX_REPLICAS + 1),
     [(FACADE, "Error", E.INVALID_REQUEST)]),
    ("LIST_MODELS", FACADE, p.ListModels("q"), [(FACADE, "ModelList", "q")]),
    ("DESCRIBE_MODEL", FACADE, p.DescribeModel("q", "m"), [(FACADE, "ModelInfo", "q")]),
    ("DESCRIBE_MODEL unknown", FACADE, p.DescribeModel("q", "x"),
     [(FACADE, "Error", E.UNKNOWN_MODEL)]),
    ("CLUSTER_INFO", FACADE, p.ClusterInfo("q"), [(FACADE, "Cluster", "q")]),
    ("PING", FACADE, p.Ping("q"), [(FACADE, "Pong", "q")]),
    ("USAGE_CALL", FACADE, p.UsageCall("q", 0, 1e10), [(FACADE, "UsageReport", "q")]),
    ("SUBMIT over its tenant's requests per minute", FACADE,
     p.Submit("r", "m", "chat", p.GenerateParams(messages=[]), tenant="t", rpm=1),
     [(FACADE, "Error", E.QUOTA_EXCEEDED)]),  # "busy" and "queued" were t's: 2, of 3 then 1
    ("LIST_FAMILIES", FACADE, p.ListFamilies("q"), [(FACADE, "Families", "q")]),
    ("REGISTER_FAMILY unreadable", FACADE, p.RegisterFamily("q", b"{"),
     [(FACADE, "Error", E.INVALID_REQUEST)]),
    ("UNREGISTER_FAMILY unknown", FACADE, p.UnregisterFamily("q", "nope"),
     [(FACADE, "Error", E.INVALID_REQUEST)]),
    ("a worker's frame from an unknown peer", FACADE, p.Heartbeat(),
     [(FACADE, "Disconnect", "")]),
    ("a broker's own reply sent to it", FACADE, p.Ack("q"), []),
    # workers
    ("PARTIAL of a running request", W, p.Partial("busy", "hi", 1), [(FACADE, "Partial", "busy")]),
    ("PARTIAL of a request it does not run", W, p.Partial("queued", "hi", 1), []),
    ("FINAL frees the slot for the next", W, p.Final("busy", "stop", p.Usage(1, 1, 2)),
     [(FACADE, "Final", "busy"), (W, "Request", "queued")]),
    ("ERROR before a token, no other replica", W, p.Error("busy", E.MODEL_FAILED, "x"),
     [(FACADE, "Error", E.MODEL_FAILED), (W, "Request", "queued")]),
    ("HEARTBEAT", W, p.Heartbeat(p.Memory(GIB, GIB)), []),
    ("MODEL_EVENT of a failed replica", W,
     p.ModelEvent(p.ReplicaStatus("m-0", "m", "demo", p.ModelState.FAILED, "crashed")),
     [(W, "Terminate", ""), (FACADE, "Error", E.WORKER_LOST)]),  # "queued" waits for its restart
    ("DISCONNECT", W, p.Disconnect("bye"), [(FACADE, "Error", E.WORKER_LOST)]),
    ("a command only the broker sends", W, p.Launch("x", SPEC), []),
]  # fmt: skip


@pytest.mark.parametrize(("peer", "message", "expected"), [r[1:] for r in ROWS],
                         ids=[r[0] for r in ROWS])  # fmt: skip
def test_a_command_and_its_answer(
    cluster: Recorder, peer: bytes, message: p.Message, expected: list[tuple[bytes, str, str]]
) -> None:
    before = cluster.broker.stats()
    cluster.peer(peer, message)
    assert sent(cluster) == expected
    assert cluster.broker.stats().handler_errors == before.handler_errors == 0


CHECKS: dict[str, Callable[[Recorder], bool]] = {
    "HEARTBEAT": lambda rec: rec.broker.cluster.workers[W].memory == p.Memory(GIB, GIB),
    "DISCONNECT": lambda rec: W not in rec.broker.cluster.workers,
    "a broker's own reply sent to it": lambda rec: rec.broker.stats().malformed == 1,
    "a command only the broker sends": lambda rec: rec.broker.stats().malformed == 1,
    "CANCEL a waiting request": lambda rec: rec.broker.cluster.scheduler.waiting("m") == 0,
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_a_command_changes_the_state(cluster: Recorder, name: str) -> None:
    (_, peer, message, _) = next(r for r in ROWS if r[0] == name)
    cluster.peer(peer, message)
    assert CHECKS[name](cluster)


@pytest.mark.parametrize(
    "end",
    [p.Final("c", "stop", p.Usage(1, 1, 2)), p.Error("c", E.CANCELLED, "cancelled")],
    ids=["finished", "cancelled"],
)
def test_the_replica_of_an_answer_finished_or_cancelled_is_remembered(
    cluster: Recorder, end: p.Final | p.Error
) -> None:
    """A cancelled answer's cells stay cached as a finished one's do: its follow-up goes
    to the same replica."""
    cluster.peer(W, p.Final("busy", "stop", p.Usage(1, 1, 2)))  # "queued" takes the slot
    cluster.peer(FACADE, p.Cancel("queued"))
    cluster.peer(W, p.Error("queued", E.CANCELLED, "cancelled"))
    request = p.Submit("c", "m", "chat", p.GenerateParams(messages=[]), conversation="conv")
    cluster.peer(FACADE, request)
    assert (W, "Request", "c") in sent(cluster)
    cluster.peer(W, end)
    assert cluster.broker.cluster.affinity.lookup(["conv"]) == "m-0"
