"""A pass's timeline as a bar chart for the terminal: one line a guest, 80 columns at most."""

from __future__ import annotations

import math
import time

from libmgsave import untrusted
from libmgsave.timeline.model import LEGEND, PassTimeline, Phase

WIDTH = 80
NAME_WIDTH = 16
OUTCOME_WIDTH = 13  # "saved-to-file"
# One character a phase kind; a failed step is drawn with FAILED whatever its kind.
MARKS = {
    "after": ".", "slot": "-", "ready": "r",
    "save": "S", "save-to-file": "F", "shutdown": "D", "poweroff": "P",
    "resume": "R", "restore": "T", "start": "B", "migrate": "M", "return": "H",
}
FAILED = "x"
UNKNOWN = "?"


def utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def seconds_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def _columns(phase: Phase, start: float, span: float, width: int) -> range:
    """The columns the phase covers: at least one, so that no step is invisible."""
    first = min(width - 1, int((phase.started - start) / span * width))
    last = max(first + 1, math.ceil((phase.finished - start) / span * width))
    return range(first, min(width, last))


def bar(phases, start: float, span: float, width: int) -> str:
    """One guest's phases across ``width`` columns; steps drawn over waits."""
    cells = [" "] * width
    for phase in sorted(phases, key=lambda p: not p.is_wait):
        mark = FAILED if not phase.ok else MARKS.get(phase.kind, UNKNOWN)
        for column in _columns(phase, start, span, width):
            cells[column] = mark
    return "".join(cells)


def _fit(text: str, width: int) -> str:
    """``text`` (a record's: escaped, ``untrusted``) in at most ``width`` columns."""
    text = untrusted.safe(text)
    return text if len(text) <= width else text[: width - 1] + "~"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def headline(timeline: PassTimeline) -> str:
    """What the pass was, when, how long, and how many saves (or starts) ran at once."""
    stopped = f", stopped by {timeline.interrupted}" if timeline.interrupted else ""
    slot = "save" if timeline.kind == "shutdown" else "start"
    return untrusted.safe(f"{timeline.kind} pass, {utc(timeline.started)}: {seconds_text(timeline.seconds)}, "
                          f"{_plural(len(timeline.rows), 'guest')}, at most {_plural(timeline.peak_in_slots, slot)} "
                          f"at once{stopped}")


def render(timeline: PassTimeline, width: int = WIDTH) -> str:
    bar_width = width - NAME_WIDTH - OUTCOME_WIDTH - 2
    span = timeline.seconds or 1.0
    first, _, rest = headline(timeline).partition(", at most ")
    lines = [f"{first}, at most {rest}"] if len(first) + len(rest) + 10 <= width else [first, f"  at most {rest}"]
    end_label = seconds_text(timeline.seconds)
    axis = "0 s".ljust(bar_width - len(end_label)) + end_label
    lines.append(f"{'GUEST':<{NAME_WIDTH}} {axis} {'OUTCOME':<{OUTCOME_WIDTH}}".rstrip())
    for row in timeline.rows:
        name = _fit(row.name, NAME_WIDTH)
        lines.append(f"{name:<{NAME_WIDTH}} {bar(row.phases, timeline.started, span, bar_width)} "
                     f"{_fit(row.outcome, OUTCOME_WIDTH)}".rstrip())
    if not timeline.rows:
        lines.append("(no guest was handled)")
    return "\n".join(lines)


def legend(width: int = WIDTH) -> list[str]:
    lines = ["legend:"]
    for kind, label in LEGEND:
        item = f"{FAILED if kind == 'failed' else MARKS[kind]} {label}"
        if len(lines[-1]) + 2 + len(item) > width:
            lines.append("       ")
        lines[-1] += "  " + item
    return lines


def render_all(timelines: list[PassTimeline], width: int = WIDTH) -> str:
    return "\n\n".join([render(t, width) for t in timelines] + ["\n".join(legend(width))])
