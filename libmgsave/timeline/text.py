"""A pass's timeline as a bar chart for the terminal: one line a guest, 80 columns at most."""

from __future__ import annotations

import math
import textwrap
import time

from libmgsave import console, texttable, units, untrusted
from libmgsave.timeline.model import LEGEND, PassTimeline, Phase

WIDTH = 80
NAME_WIDTH = 16  # on a terminal; in a pipe a name is whole
OUTCOME_WIDTH = 13  # "saved-to-file"
# One character a phase kind; a failed step is drawn with FAILED whatever its kind.
MARKS = {
    "order": ":", "after": ".", "slot": "-", "ready": "r",
    "save": "S", "save-to-file": "F", "shutdown": "D", "poweroff": "P",
    "resume": "R", "restore": "T", "start": "B", "migrate": "M", "return": "H",
}
FAILED = "x"
UNKNOWN = "?"


def utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def seconds_text(seconds: float) -> str:
    """A pass's length: spelt as everywhere (``units.duration``), as precise as the SVG's axis."""
    return units.duration(seconds)


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
    """``text`` (a record's: escaped, ``untrusted``) in at most ``width`` columns, cut with the
    one ellipsis the tables use."""
    return texttable.cut(untrusted.safe(text), width)


def headline(timeline: PassTimeline) -> str:
    """What the pass was, when, how long, and how many saves (or starts) ran at once."""
    stopped = f", stopped by {timeline.interrupted}" if timeline.interrupted else ""
    slot = "save" if timeline.kind == "shutdown" else "start"
    idle = f" ({timeline.idle} with nothing to do, not drawn)" if timeline.idle else ""
    return untrusted.safe(f"{timeline.kind} pass, {utc(timeline.started)}: {seconds_text(timeline.seconds)}, "
                          f"{units.plural(timeline.guests, 'guest')}{idle}, at most "
                          f"{units.plural(timeline.peak_in_slots, slot)} at once{stopped}")


def render(timeline: PassTimeline, width: int = WIDTH, *, shorten: bool | None = None) -> str:
    """The chart: ``width`` columns, names cut to fit; unless ``shorten`` is false (by default:
    in a pipe, or with --full, as ``console.may_shorten`` says), then every name is whole and
    the lines as long as the longest name makes them."""
    shorten = console.may_shorten() if shorten is None else shorten
    names = [untrusted.safe(row.name) for row in timeline.rows]
    name_width = NAME_WIDTH if shorten else max([NAME_WIDTH, *map(len, names)])
    bar_width = width - NAME_WIDTH - OUTCOME_WIDTH - 2
    span = timeline.seconds or 1.0
    lines = textwrap.wrap(headline(timeline), width, subsequent_indent="  ", break_on_hyphens=False)
    end_label = seconds_text(timeline.seconds)
    axis = "0 s".ljust(bar_width - len(end_label)) + end_label
    lines.append(f"{'GUEST':<{name_width}} {axis} {'OUTCOME':<{OUTCOME_WIDTH}}".rstrip())
    for row in timeline.rows:
        name = _fit(row.name, name_width)
        lines.append(f"{name:<{name_width}} {bar(row.phases, timeline.started, span, bar_width)} "
                     f"{_fit(row.outcome, OUTCOME_WIDTH)}".rstrip())
    if not timeline.rows:
        lines.append("(no guest was handled)")
    lines += failures(timeline, width if shorten else None)
    return "\n".join(lines + battery_lines(timeline))


def battery_lines(timeline: PassTimeline) -> list[str]:
    """The UPS's runtime at each decision of a shutdown pass on a battery: the deadline set,
    each move down, each re-plan (and the guests it moved), from the pass's start."""
    if not timeline.battery:
        return []
    lines = ["UPS runtime at each decision:"]
    for decision in timeline.battery:
        runtime = "runtime unknown" if decision.runtime is None else f"runtime {units.seconds(decision.runtime)}"
        names = ", ".join(untrusted.safe(name) for name in decision.moved)
        moved = f": moved to cheaper steps: {names}" if names else ""
        offset = f"{max(0.0, decision.at - timeline.started):.1f} s"
        lines.append(f"  +{offset:<8} {decision.step:<10} {runtime}, {units.seconds(decision.seconds_left)} left{moved}")
    return lines


def failures(timeline: PassTimeline, width: int | None) -> list[str]:
    """One line (wrapped to ``width``, or whole) for each failed step with its error: the chart
    marks it, this says why (a resume that failed after an upgrade names the change here)."""
    lines = []
    for row in timeline.rows:
        for phase in (p for p in row.phases if not p.ok and p.error):
            said = untrusted.safe(f"{FAILED} {row.name}: {phase.kind} failed: {phase.error}")
            lines += textwrap.wrap(said, width, subsequent_indent="    ", break_on_hyphens=False) if width else [said]
    return lines


def legend(width: int = WIDTH) -> list[str]:
    lines = ["legend:"]
    for kind, label in LEGEND:
        item = f"{FAILED if kind == 'failed' else MARKS[kind]} {label}"
        if len(lines[-1]) + 2 + len(item) > width:
            lines.append("       ")
        lines[-1] += "  " + item
    return lines


def render_all(timelines: list[PassTimeline], width: int = WIDTH, *, shorten: bool | None = None) -> str:
    return "\n\n".join([render(t, width, shorten=shorten) for t in timelines] + ["\n".join(legend(width))])
