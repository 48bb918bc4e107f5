"""Sizes and limits as people read them, shared by every role's messages and tables."""

from __future__ import annotations

MIB = 1024**2
GIB = 1024**3


def size_text(n: float) -> str:
    """Bytes for a person: MiB below 1 GiB (so a small model does not read "0.06 GiB"),
    GiB with two decimals from there."""
    if abs(n) < GIB:
        return f"{n / MIB:.0f} MiB" if abs(n) >= 10 * MIB else f"{n / MIB:.1f} MiB"
    return f"{n / GIB:.2f} GiB"
