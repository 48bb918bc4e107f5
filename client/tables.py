"""Tables for the ``xb`` commands: names and uids are never cut, other columns wrap.

Rich shortens every column of a table wider than the terminal, names included ("baichu…"
in 80 columns), and with minimum widths it overflows instead. So the widths are set here:
key columns (names, uids) get their full width, and the others give up room, widest
first, down to their longest word and then, if they must, below it (text folds).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.table import Table

# Each column but the last is followed by a space of padding, a divider and another space.
_BETWEEN = 3
_NARROWEST = 4


def widths(
    headers: Sequence[str], rows: Sequence[Sequence[str]], whole: Sequence[int], room: int
) -> list[int]:
    """Column widths that fit ``room`` characters where the key columns allow it."""
    cells = [[header, *(row[i] for row in rows)] for i, header in enumerate(headers)]
    natural = [
        max(len(line) for text in column for line in text.splitlines() or [""]) for column in cells
    ]
    words = [max(len(w) for text in column for w in text.split() or [""]) for column in cells]
    out = list(natural)
    room -= _BETWEEN * (len(headers) - 1)
    for floor in (words, [_NARROWEST] * len(headers)):
        while sum(out) > room:
            shrinkable = [
                i
                for i in range(len(out))
                if i not in whole and out[i] > max(floor[i], _NARROWEST if floor is words else 1)
            ]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: out[i])
            out[widest] -= 1
    return out


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    whole: Sequence[int] = (0,),
    room: int = 80,
) -> Table:
    """A table of ``rows`` for a terminal ``room`` wide; the columns at the indices in
    ``whole`` are never cut, even where the table must then be wider than ``room``."""
    out = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, expand=False)
    for index, (header, width) in enumerate(
        zip(headers, widths(headers, rows, whole, room), strict=True)
    ):
        if index in whole:
            out.add_column(header, no_wrap=True, width=width)
        else:
            out.add_column(header, overflow="fold", width=width)
    for row in rows:
        out.add_row(*row)
    return out
