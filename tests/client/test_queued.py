"""Reading a stream's place in line: the SSE comment, the ordinal, the line xb chat shows."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from xb.client import calls
from xb.client.cli.waiting import WaitingLine

pytestmark = pytest.mark.unit


ORDINALS = {
    1: "1st",
    2: "2nd",
    3: "3rd",
    4: "4th",
    11: "11th",
    12: "12th",
    13: "13th",
    21: "21st",
    22: "22nd",
    23: "23rd",
    101: "101st",
    111: "111th",
}


@pytest.mark.parametrize(("number", "text"), ORDINALS.items())
def test_ordinals(number: int, text: str) -> None:
    assert calls.ordinal(number) == text


def test_the_waiting_text() -> None:
    assert calls.waiting_text(3) == "waiting (3rd in line)"


def test_a_stream_hands_its_places_to_on_queued_and_its_chunks_on() -> None:
    places: list[int] = []
    call = calls.chat("m", [], None, {"stream": True}, places.append)
    lines = [": queued, position 2", "", ": keep-alive", ": queued, position 1", ""]
    lines.append('data: {"a": 1}')
    chunks = [calls.read_line(call, line) for line in lines]
    assert places == [2, 1]
    assert chunks == [None] * 5 + [{"a": 1}]
    # A comment that only looks like one is skipped, as any comment.
    assert calls.read_line(call, ": queued, position soon") is None
    assert places == [2, 1]
    # Without on_queued it is a comment like any other.
    assert calls.read_line(calls.chat("m", [], None, None), ": queued, position 1") is None


def test_off_a_terminal_each_new_place_is_a_line_that_stays() -> None:
    out = io.StringIO()
    waiting = WaitingLine(Console(file=out, width=80))
    for place in (3, 3, 2, 1):
        waiting.show(place)
    waiting.clear()
    assert out.getvalue().splitlines() == [
        "waiting (3rd in line)",
        "waiting (2nd in line)",
        "waiting (1st in line)",
    ]


def test_on_a_terminal_the_line_is_erased_at_the_first_token() -> None:
    out = io.StringIO()
    waiting = WaitingLine(Console(file=out, width=80, force_terminal=True))
    waiting.show(2)
    waiting.show(1)
    waiting.clear()
    # A transient status: once stopped, the cursor goes back up to its line and erases
    # it, so the answer prints where the status was.
    shown = out.getvalue()
    assert "waiting (1st in line)" in shown
    assert shown.endswith("\r\x1b[1A\x1b[2K")
