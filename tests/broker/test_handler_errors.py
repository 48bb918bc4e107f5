"""A bug in one of the broker's handlers is its own fault, not the peer's: it is counted
apart from malformed frames, the request it was handling ends with an error, and the broker
goes on serving."""

from __future__ import annotations

import pytest

from tests.broker.recorder import FACADE, Recorder
from xb.core import protocol as p

pytestmark = pytest.mark.unit


def test_a_handler_bug_is_counted_apart_and_answered(
    rec: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(client: bytes, message: p.Submit) -> None:
        raise KeyError("a bug")

    monkeypatch.setitem(rec.broker.from_facades, p.Submit, broken)
    rec.peer(FACADE, p.Submit("r1", "m", "chat", p.GenerateParams(messages=[])))

    (reply,) = rec.take(FACADE)
    assert isinstance(reply, p.Error)
    assert (reply.request_id, reply.code) == ("r1", p.ErrorCode.INTERNAL)
    stats = rec.broker.stats()
    assert (stats.handler_errors, stats.malformed) == (1, 0)
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)

    # The broker goes on: the next frame is handled, and a bad one is still malformed.
    rec.peer(FACADE, p.Ping("ping"))
    (pong,) = rec.take(FACADE)
    assert isinstance(pong, p.Pong) and pong.stats is not None
    assert pong.stats.handler_errors == 1
    rec.frames([FACADE, b"not", b"a frame"])
    assert (rec.broker.stats().handler_errors, rec.broker.stats().malformed) == (1, 1)
