"""Tables for a terminal of a given width (80 columns unless the terminal says otherwise).

A column is shrunk only when the table would not fit otherwise: the columns marked shrinkable
give up their widest cells first, each cut with an ellipsis, never below their header or
``MIN_WIDTH``. The full values are in the verbose forms (``mgsave plan --verbose``) and in JSON.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from libmgsave import console, untrusted

DEFAULT_WIDTH = 80
MIN_WIDTH = 8
GAP = "  "


@dataclass(frozen=True)
class Column:
    header: str
    shrink: bool = False  # may be cut to fit
    right: bool = False  # numbers: aligned on the right
    colour: Callable[[str], str | None] | None = None  # a cell's colour (console.COLOURS), on a terminal
    # Cut in the middle, keeping both ends: connection URIs share their start (qemu+ssh://...)
    # and differ at the end, which a cut at the end would lose.
    middle: bool = False


def width() -> int:
    """The width to fit: the terminal's when standard output is one (at least 40), else 80."""
    try:
        if sys.stdout.isatty():
            return max(40, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)
    except (AttributeError, ValueError, OSError):
        pass
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) >= 40 else DEFAULT_WIDTH


def ellipsis() -> str:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return "\u2026" if encoding == "utf8" else "~"


def cut(text: str, room: int, *, middle: bool = False) -> str:
    if len(text) <= room:
        return text
    mark = ellipsis()
    keep = max(0, room - len(mark))
    if middle:
        head = (keep + 1) // 2
        return text[:head] + mark + text[len(text) - (keep - head):]
    return text[:keep] + mark


def render(columns: Sequence[Column], rows: Sequence[Sequence[object]], *, total: int | None = None,
           indent: str = "") -> list[str]:
    """The header line and one line a row, each at most ``total`` (default: ``width()``) long."""
    total = width() if total is None else total
    cells = [[untrusted.message(c) for c in row] for row in rows]  # one line each: names, errors escaped
    widths = [max([len(col.header)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    room = total - len(indent) - len(GAP) * (len(columns) - 1)
    while sum(widths) > room:
        shrinkable = [i for i, col in enumerate(columns)
                      if col.shrink and widths[i] > max(MIN_WIDTH, len(col.header))]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
    lines = []
    for number, row in enumerate([[col.header for col in columns], *cells]):
        parts = []
        for i, (col, text) in enumerate(zip(columns, row, strict=True)):
            shown = cut(text, widths[i], middle=col.middle)
            shown = shown.rjust(widths[i]) if col.right else shown.ljust(widths[i])
            # Painted after the padding: the escape codes take no columns.
            colour = col.colour(text) if col.colour and number else None
            parts.append(console.paint(shown, colour) if colour else shown)
        lines.append((indent + GAP.join(parts)).rstrip())
    return lines
