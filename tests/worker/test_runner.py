"""The model process's runner: what it sends to its worker."""

from __future__ import annotations

from typing import Any

import pytest

from xb.core import protocol as p
from xb.worker import model_process
from xb.worker.backend import Done, Piece
from xb.worker.model_process import Runner

pytestmark = pytest.mark.unit


class Socket:
    def __init__(self) -> None:
        self.sent: list[p.Message] = []

    def send_multipart(self, frames: list[bytes]) -> None:
        assert len(frames[-1]) <= p.MAX_BODY_BYTES
        self.sent.append(p.decode(frames))


class Engine:
    cached_tokens = 0

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.shares: list[int] = []

    def share(self, threads: int) -> None:
        self.shares.append(threads)

    def cancel(self, request_id: str) -> bool:
        self.cancelled.append(request_id)
        return True

    def add(self, request_id: str, *rest: object) -> None:
        pass


def test_a_result_too_big_for_one_frame_ends_its_request_with_the_reason() -> None:
    sock = Socket()
    engine = Engine()
    runner = Runner(sock, engine, lambda: None)  # type: ignore[arg-type]
    # 16,000 inputs of 64 dimensions: about 9 MiB as a frame.
    vectors: Any = [[0.123456789] * 64] * 16_000
    runner._send(p.Final("big", "stop", p.Usage(16_000, 0, 16_000), embeddings=vectors))
    runner._send(p.Final("small", "stop", p.Usage(1, 0, 1), embeddings=[[0.5] * 64]))
    big, small = sock.sent
    assert isinstance(big, p.Error) and big.request_id == "big"
    assert big.code == p.ErrorCode.INVALID_REQUEST and "fewer inputs" in big.message
    assert isinstance(small, p.Final) and small.embeddings == [[0.5] * 64]
    assert engine.cancelled == ["big"]


def test_a_share_from_the_worker_reaches_the_engine() -> None:
    engine = Engine()
    runner = Runner(Socket(), engine, lambda: None)  # type: ignore[arg-type]
    runner._handle(p.encode(p.Share(3)))
    assert engine.shares == [3]


def test_the_pieces_of_a_step_go_together_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that checks drafts gives a sequence several tokens at once: one frame carries
    them all, not the first alone with the rest a step late."""
    monkeypatch.setattr(model_process, "COALESCE_SECONDS", 60.0)  # a long wait for frames
    monkeypatch.setattr(model_process, "MAX_COALESCE_SECONDS", 60.0)
    sock = Socket()
    runner = Runner(sock, Engine(), lambda: None)  # type: ignore[arg-type]
    for rid in "ab":
        params = p.GenerateParams(prompt="hi", max_tokens=8)
        runner._handle(p.encode(p.Request(rid, "r", "completion", params)))
    runner._deliver([("a", Piece("x")), ("a", Piece("y")), ("b", Piece(""))])
    # The first text goes at once; "b" has produced none yet (a stop word may be starting).
    assert [(m.request_id, m.text, m.tokens) for m in sock.sent] == [("a", "xy", 2)]
    runner._deliver([("a", Piece("z")), ("b", Piece("q"))])
    assert [(m.request_id, m.text, m.tokens) for m in sock.sent[1:]] == [("b", "q", 2)]
    # "a" waits for its next frame; once the wait is over ...
    monkeypatch.setattr(model_process, "COALESCE_SECONDS", 0.0)
    done = Done("stop", p.Usage(1, 3, 4))
    runner._deliver([("a", Piece(t)) for t in "1234"] + [("b", Piece("r")), ("b", done)])
    b, a = sock.sent[2:]
    assert isinstance(a, p.Partial)
    assert (a.request_id, a.text, a.tokens, a.index) == ("a", "z1234", 5, 1)
    # ... and an answer that ends sends the rest in its last frame.
    assert isinstance(b, p.Final) and b.request_id == "b" and b.text == "r"
    assert set(runner._outgoing) == {"a"}
