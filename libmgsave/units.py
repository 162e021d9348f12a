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


def duration(value: float | None, *, precise: bool = True) -> str:
    """A duration, spelt one way everywhere in text: ``0.25 s``, ``42.0 s`` (``precise``: a
    measured time; else ``42 s``), ``2 min 05 s``, ``1 h 05 min``, ``2 d 03 h``; ``-`` for None."""
    if value is None:
        return "-"
    value = max(0.0, value)
    if value < (59.95 if precise else 59.5):  # what would be rounded up to 60 s is a minute
        if not precise:
            return f"{value:.0f} s" if value >= 0.5 or value == 0 else "under 1 s"
        return f"{value:.2f} s" if value < 1 else f"{value:.1f} s"
    whole = round(value)
    for big, small, scale in (("d", "h", 3600), ("h", "min", 60), ("min", "s", 1)):
        unit = scale * (24 if big == "d" else 60)
        if whole >= unit or big == "min":
            larger, smaller = divmod(whole // scale, unit // scale)
            return f"{larger} {big} {smaller:02d} {small}"
    raise AssertionError("unreachable")


def seconds(value: float | None) -> str:
    """A duration for a table cell or an age, to the second: ``42 s``, ``12 min 30 s``."""
    return duration(value, precise=False)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 file``, ``2 files``; ``nouns`` where the plural is not ``noun`` + s."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"
