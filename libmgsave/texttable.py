"""Tables for people: headed columns, one line a row.

Like ``systemctl``, a table is fitted to the terminal's width only on a terminal, and never
with ``--full``: written to a pipe or a file, every cell is whole, so that ``grep`` finds a
guest by its name. On a terminal, the columns marked shrinkable give up their widest cells
first, each cut with the one ellipsis (``console.ellipsis``), never below their header or
``MIN_WIDTH``; a name (``Column.name``) is cut only when no other column can give way. A name
or a cell cut in the middle keeps what tells it apart from the column's other cut cells (two
peers' URIs differ in the host, not at their ends). The full values are also in the verbose forms
(``mgsave plan --verbose``) and in JSON.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from libmgsave import console, untrusted

DEFAULT_WIDTH = 80
MIN_WIDTH = 8
GAP = "  "


@dataclass(frozen=True)
class Column:
    """One column of a text table."""
    header: str
    shrink: bool = False  # may be cut to fit (on a terminal)
    right: bool = False  # numbers: aligned on the right
    colour: Callable[[str], str | None] | None = None  # a cell's colour (console.COLOURS), on a terminal
    # Cut in the middle, keeping what differs: connection URIs share their start (qemu+ssh://...)
    # and often their end (/system), which a cut at one end would lose.
    middle: bool = False
    name: bool = False  # a guest's or a connection's name: cut only when no other column can give way


def width() -> int:
    """The width to fit: on a terminal, ``$COLUMNS`` or the terminal's (at least 40); else
    ``$COLUMNS`` or 80 (for wrapped text: a table is not cut off a terminal)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) >= 40:
        return int(columns)
    if console.is_terminal("stdout"):
        try:
            return max(40, os.get_terminal_size(sys.stdout.fileno()).columns)
        except (AttributeError, ValueError, OSError):
            pass
    return DEFAULT_WIDTH


def ellipsis() -> str:
    return console.ellipsis("stdout")


def cut(text: str, room: int, *, middle: bool = False, keep: tuple[int, int] | None = None) -> str:
    """``text`` in at most ``room`` characters: cut at its end, or in the middle; ``keep``
    (start, end) is the part to keep whole if it fits (what tells the cell from its column's
    others), the cut made around it."""
    if len(text) <= room:
        return text
    mark = ellipsis()
    spare = max(0, room - len(mark))
    if keep and (middle or keep[1] > spare) and keep[1] - keep[0] + 2 * len(mark) <= room:
        return _around(text, keep[0], keep[1], room, mark)
    if not middle:
        return text[:spare] + mark
    head = (spare + 1) // 2
    return text[:head] + mark + text[len(text) - (spare - head):]


def _around(text: str, start: int, end: int, room: int, mark: str) -> str:
    """The window ``text[start:end]`` widened a character at a time, on the side widened less so
    far, to at most ``room`` with a mark at each end where text is left out."""
    def shown(s: int, e: int) -> str:
        return (mark if s > 0 else "") + text[s:e] + (mark if e < len(text) else "")

    s, e = start, end
    while True:
        wider = ([(s - 1, e)] if s > 0 else []) + ([(s, e + 1)] if e < len(text) else [])
        wider = [w for w in wider if len(shown(*w)) <= room]
        if not wider:
            return shown(s, e)
        s, e = min(wider, key=lambda w: (max(start - w[0], w[1] - end), w[0] == s))


def distinct_parts(texts: Sequence[str]) -> dict[str, tuple[int, int]]:
    """For each of ``texts`` (a column's cells that are cut), the part (start, end) that tells it
    from the others: between the longest start and the longest end it shares with any other.
    A text shares the most with its neighbours in sorted order (of the texts, and of the texts
    reversed): n log n, not n squared, for a column of thousands of guests."""
    unique = sorted(set(texts))
    prefix = _longest_shared(unique)
    suffix = _longest_shared(sorted(t[::-1] for t in unique))
    parts = {}
    for text in unique:
        start, end = prefix.get(text, 0), len(text) - suffix.get(text[::-1], 0)
        if len(unique) > 1 and end > start:
            parts[text] = (start, end)
    return parts


def _longest_shared(ordered: Sequence[str]) -> dict[str, int]:
    """For each of the sorted ``ordered``, the longest start it shares with another of them."""
    shared = {text: 0 for text in ordered}
    for a, b in zip(ordered, ordered[1:]):
        common = len(os.path.commonprefix([a, b]))
        shared[a], shared[b] = max(shared[a], common), max(shared[b], common)
    return shared


def _widths(columns: Sequence[Column], cells: list[list[str]], room: int) -> list[int]:
    """Each column's width: the widest cell, less what it must give up to fit ``room``; the
    other shrinkable columns first, the names last."""
    widths = [max([len(col.header)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    for names in (False, True):
        while sum(widths) > room:
            shrinkable = [i for i, col in enumerate(columns) if col.shrink and col.name is names
                          and widths[i] > max(MIN_WIDTH, len(col.header))]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: widths[i])
            widths[widest] -= 1
    return widths


def render(columns: Sequence[Column], rows: Sequence[Sequence[object]], *, total: int | None = None,
           indent: str = "") -> list[str]:
    """The header line and one line a row; on a terminal (``console.may_shorten``) each at most
    ``total`` (default: ``width()``) long as far as the shrinkable columns can give way."""
    # One line each: names, errors escaped; a name bounded as a name, whole or not.
    cells = [[untrusted.safe(c) if col.name else untrusted.message(c) for col, c in zip(columns, row, strict=True)]
             for row in rows]
    if console.may_shorten():
        total = width() if total is None else total
        widths = _widths(columns, cells, total - len(indent) - len(GAP) * (len(columns) - 1))
    else:
        widths = _widths(columns, cells, sys.maxsize)
    keep = [distinct_parts([r[i] for r in cells if len(r[i]) > widths[i]]) if col.middle or col.name else {}
            for i, col in enumerate(columns)]
    lines = []
    for number, row in enumerate([[col.header for col in columns], *cells]):
        parts = []
        for i, (col, text) in enumerate(zip(columns, row, strict=True)):
            shown = cut(text, widths[i], middle=col.middle, keep=keep[i].get(text) if number else None)
            shown = shown.rjust(widths[i]) if col.right else shown.ljust(widths[i])
            # Painted after the padding: the escape codes take no columns.
            colour = col.colour(text) if col.colour and number else None
            parts.append(console.paint(shown, colour) if colour else shown)
        lines.append((indent + GAP.join(parts)).rstrip())
    return lines
