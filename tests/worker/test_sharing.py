"""The worker shares its CPU threads among the replicas that are working, not among all
it has loaded, and tells each model process its share before that process needs it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from xb.core import protocol as p
from xb.worker.server import Replica, Worker

pytestmark = pytest.mark.unit


class Process:
    """A model process that is never really started."""

    pid = 0
    code: int | None = None  # None: running

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, signal: int) -> None:
        pass

    def kill(self) -> None:
        pass

    def wait(self) -> int:
        return 0


@pytest.fixture
def worker() -> Iterator[Worker]:
    worker = Worker("tcp://127.0.0.1:9", threads=4)
    yield worker
    worker.shutdown()


def loaded(
    worker: Worker, *ids: str, model_format: str = "gguf", threads: int = 4
) -> list[tuple[str, Any]]:
    """Replicas ``ids`` loaded with ``threads`` and reported ready; what the worker then
    sends its model processes is recorded."""
    sent: list[tuple[str, Any]] = []
    worker._send_model = lambda rid, message: sent.append((rid, message))  # type: ignore[method-assign]
    worker._send_broker = lambda message: None  # type: ignore[method-assign]
    for rid in ids:
        spec = p.ModelSpec(rid, rid, model_format=model_format)
        worker.replicas[rid] = Replica(spec, rid, Process(), threads=threads)  # type: ignore[arg-type]
        worker.process_model(rid, p.ModelEvent(p.ReplicaStatus(rid, rid, rid, p.ModelState.READY)))
    return sent


def request(rid: str, n: int) -> p.Request:
    return p.Request(f"{rid}-r{n}", rid, "chat", p.GenerateParams())


def shares(sent: list[tuple[str, Any]]) -> list[tuple[str, int]]:
    return [(rid, m.threads) for rid, m in sent if isinstance(m, p.Share)]


def test_a_replica_working_alone_has_every_thread(worker: Worker) -> None:
    sent = loaded(worker, "a", "b", "c")
    assert shares(sent) == []  # loaded with the whole budget: nobody is working
    worker.process_broker(request("a", 1))
    assert shares(sent) == []  # alone at work, it keeps all four
    assert [type(m) for _, m in sent] == [p.Request]


def test_shares_follow_the_replicas_at_work_and_come_before_the_request(worker: Worker) -> None:
    sent = loaded(worker, "a", "b", "c")
    worker.process_broker(request("a", 1))
    sent.clear()
    worker.process_broker(request("b", 1))
    # Two at work: two threads each, and b hears its share before its request.
    assert [(rid, type(m).__name__) for rid, m in sent] == [
        ("a", "Share"),
        ("b", "Share"),
        ("c", "Share"),
        ("b", "Request"),
    ]
    assert set(shares(sent)) == {("a", 2), ("b", 2), ("c", 2)}
    sent.clear()
    worker.process_broker(request("b", 2))  # more work for b: the count is unchanged
    assert shares(sent) == []
    worker.process_model("b", p.Final("b-r1", "stop", p.Usage(1, 1, 2)))
    assert shares(sent) == []  # b still has a request in hand
    worker.process_model("b", p.Error("b-r2", p.ErrorCode.CANCELLED, "cancelled"))
    assert set(shares(sent)) == {("a", 4), ("b", 4), ("c", 4)}  # a alone again


def test_a_replica_that_dies_or_is_terminated_gives_its_share_back(worker: Worker) -> None:
    sent = loaded(worker, "a", "b", "c")
    for rid in ("a", "b", "c"):
        worker.process_broker(request(rid, 1))
    sent.clear()
    worker.terminate("c")
    assert set(shares(sent)) == {("a", 2), ("b", 2)}
    sent.clear()
    worker.replicas["b"].process.code = -9  # type: ignore[attr-defined]
    worker._reap()
    assert shares(sent) == [("a", 4)]


def test_a_replica_loaded_while_others_work_hears_its_share_when_ready(worker: Worker) -> None:
    sent = loaded(worker, "a", "b")
    worker.process_broker(request("a", 1))
    worker.process_broker(request("b", 1))
    sent.clear()
    # Loaded with the whole budget while nobody worked; ready now, with two at work.
    sent += loaded(worker, "c", threads=4)
    assert shares(sent) == [("c", 2)]


def test_chatglm_replicas_keep_their_own_threads(worker: Worker) -> None:
    sent = loaded(worker, "a")
    sent += loaded(worker, "g", model_format="ggml")
    worker.process_broker(request("a", 1))
    worker.process_broker(request("g", 1))
    assert shares(sent) == []
