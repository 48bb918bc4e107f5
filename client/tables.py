"""Tables for the ``xb`` commands: names and uids are never cut, other columns wrap.

Rich shortens every column of a table wider than the terminal, names included ("baichu…"
in 80 columns). A name that cannot be read cannot be typed into the next command, so key
columns (and short ones, such as a type or a count) keep their full width and the rest
fold onto more lines instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.table import Table


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], whole: Sequence[int] = (0,)
) -> Table:
    """A table of ``rows``; the columns at the indices in ``whole`` are never cut."""
    out = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for index, header in enumerate(headers):
        if index in whole:
            widest = max([len(header), *(len(row[index]) for row in rows)])
            out.add_column(header, no_wrap=True, min_width=widest)
        else:  # wrapped between words, never inside one unless a word is wider than all
            longest = max([1, *(len(w) for row in rows for w in row[index].split())])
            out.add_column(header, overflow="fold", min_width=min(longest, 20))
    for row in rows:
        out.add_row(*row)
    return out
