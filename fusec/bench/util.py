"""Small helpers every bench module uses: ordered de-duplication and human-readable numbers."""
from __future__ import annotations

from typing import Iterable


def unique(items: Iterable) -> list:
    """The items in first-seen order, without repeats."""
    return list(dict.fromkeys(items))


def tail(text: str, lines: int = 25) -> str:
    """The last ``lines`` lines of a log, for an error message."""
    return "\n".join(text.strip().splitlines()[-lines:])


def gb(n: float | None) -> str:
    """Bytes as GB / MB / KB / B (decimal units), "-" for unknown."""
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def secs(v: float | None) -> str:
    """Seconds for a table cell, "-" for unknown."""
    if v is None:
        return "-"
    return f"{v:.3f} s" if v < 100 else f"{v:,.0f} s"
