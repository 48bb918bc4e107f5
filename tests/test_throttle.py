"""Rate-limited warnings: a misbehaving peer cannot fill the log."""

from __future__ import annotations

import logging

import pytest

from xb.core.throttle import Throttle

pytestmark = pytest.mark.unit


def test_one_line_per_peer_and_kind_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    throttle = Throttle(logging.getLogger("xb.test"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="xb.test"):
        for i in range(1000):
            throttle.warning("peer-a", "malformed", "bad frame %d", i)
        throttle.warning("peer-b", "malformed", "bad frame from b")
        throttle.warning("peer-a", "full", "queue full")
        now[0] = 10.5
        throttle.warning("peer-a", "malformed", "bad frame %d", 1000)
        try:
            raise ValueError("boom")
        except ValueError:
            throttle.exception("peer-a", "error", "failed")
            throttle.exception("peer-a", "error", "failed again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "bad frame 0",
        "bad frame from b",
        "queue full",
        "bad frame 1000 (999 more like it left out)",
        "failed",
    ]
    assert caplog.records[-1].exc_info is not None
