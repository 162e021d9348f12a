"""Sizes, rates and durations as people read them: binary units (KiB, MiB, GiB) everywhere in
text, so that a guest's 4 GiB of memory is "4.0 GiB" in the plan, the log and the summary
alike. JSON and the record carry plain bytes and seconds."""

from __future__ import annotations

_BINARY = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def size(n: float | None, *, none: str = "-") -> str:
    """``n`` bytes: ``512 B``, ``3.5 KiB``, ``256 MiB``, ``4.0 GiB``; ``none`` for None."""
    if n is None:
        return none
    for unit, scale in _BINARY:
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    return f"{n:.0f} B"


def rate(bytes_per_second: float | None) -> str:
    """``190.7 MiB/s``."""
    return "?" if bytes_per_second is None else size(bytes_per_second) + "/s"


def seconds(value: float | None) -> str:
    """A duration for a table cell: ``42 s``, ``12 min``, ``3.5 h``, ``2.0 d``."""
    if value is None:
        return "-"
    for unit, scale in (("d", 86400), ("h", 3600), ("min", 60)):
        if value >= scale * 1.5 or (unit == "min" and value >= 100):
            amount = value / scale
            return f"{amount:.0f} {unit}" if amount >= 10 else f"{amount:.1f} {unit}"
    return f"{value:.0f} s"
