"""``xb usage``'s table fits an 80-column terminal for usual names: nothing folded."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from xb.client.cli.usage import HEADERS, count, duration, rows
from xb.client.tables import table

pytestmark = pytest.mark.unit


def test_the_usage_table_fits_80_columns() -> None:
    row = {
        "tenant": "nightly",
        "model": "smollm2",
        "requests": 12_345,
        "prompt_tokens": 9_876_543,
        "cached_tokens": 8_765_432,
        "completion_tokens": 1_234_567,
        "queue_wait_mean": 1.2345,
        "queue_wait_p95": 2.5,
        "preemptions": 321,
    }
    out = io.StringIO()
    console = Console(file=out, width=80)
    console.print(table(HEADERS, rows({"data": [row]}), whole=(0, 1), room=80), crop=False)
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80, out.getvalue()
    assert lines[0].split() == list(HEADERS)  # every header on one line, whole
    figures = next(line for line in lines if line.startswith("nightly")).split()
    assert figures == [
        "nightly",
        "smollm2",
        "12.3k",
        "9.88M",
        "8.77M",
        "1.23M",
        "1.2s",
        "2.5s",
        "321",
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (9_999, "9999"),
        (10_000, "10k"),
        (999_499, "999k"),
        (999_999, "1M"),
        (2**40, "1.1e+03G"),
    ],
)
def test_counts_are_at_most_five_characters_up_to_a_trillion(value: int, text: str) -> None:
    assert count(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0ms"),
        (0.0123, "12ms"),
        (0.9994, "999ms"),
        (0.9996, "1s"),
        (2.5, "2.5s"),
        (41.2, "41s"),
    ],
)
def test_waits_are_at_most_five_characters(value: float, text: str) -> None:
    assert duration(value) == text
