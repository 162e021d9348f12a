"""A pass's timeline as an SVG picture, written by hand: a lane per guest, a bar per phase.

Each pass gets its own time axis; every bar has a tooltip (its ``<title>``) with the guest,
the phase, its length and, for a failed step, the error. Every text in it goes through
``untrusted.safe`` for XML: a record's names and errors can hold what XML 1.0 forbids.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from libmgsave import units, untrusted
from libmgsave.outcomes import Outcome, Severity
from libmgsave.timeline.model import LEGEND, PassTimeline
from libmgsave.untrusted import Sink
from libmgsave.timeline.text import headline

WIDTH = 960
LABEL_WIDTH = 170
OUTCOME_WIDTH = 120
MARGIN = 16
ROW_HEIGHT = 22
BAR_HEIGHT = 14
PASS_HEADER = 48  # the pass's title and its axis
FONT = "font-family='DejaVu Sans, Verdana, sans-serif' font-size='12'"
# Fill colours; a failed step is FAILED whatever its kind. Each far enough from every other
# (a test measures it) that two kinds side by side, or a bar and the legend, are told apart.
COLOURS = {
    "order": "#e8e1c8", "after": "#b0b0b0", "slot": "#f2c14e", "ready": "#9be07f",
    "save": "#1f4fb4", "save-to-file": "#27c4d9", "shutdown": "#ff7f0e", "poweroff": "#8c564b",
    "resume": "#1e8c2e", "restore": "#a4c81e", "start": "#e377c2", "migrate": "#7b3fb0", "return": "#c9a8f0",
}
FAILED = "#d62728"
# An outcome's colour, by its severity: ok, degraded (left-off, shut-down instead of saved...), failed.
SEVERITY_COLOURS = {Severity.OK: "#1e7a2a", Severity.DEGRADED: "#b86e00", Severity.FAILED: FAILED}
UNKNOWN = "#7f7f7f"
TICK_STEPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


def tick_step(seconds: float, most: int = 10) -> float:
    """The smallest round step that puts at most ``most`` ticks on the axis."""
    return next((step for step in TICK_STEPS if seconds / step <= most), TICK_STEPS[-1])


def outcome_colour(outcome: str) -> str:
    """The colour of a guest's outcome label: its severity's (a record's outcome may be unknown)."""
    try:
        return SEVERITY_COLOURS[Outcome(outcome).severity]
    except ValueError:
        return UNKNOWN


def _text(x: float, y: float, text: str, extra: str = "") -> str:
    return f"<text x='{x:.1f}' y='{y:.1f}' {FONT} {extra}>{untrusted.safe(text, Sink.XML)}</text>"


def _pass(timeline: PassTimeline, top: float) -> tuple[list[str], float]:
    """The pass's elements from ``top`` down, and the height they take."""
    plot = WIDTH - LABEL_WIDTH - OUTCOME_WIDTH - 2 * MARGIN
    left = MARGIN + LABEL_WIDTH
    span = timeline.seconds or 1.0
    scale = plot / span
    title = headline(timeline)
    out = [_text(MARGIN, top + 16, title, "font-weight='bold'")]
    axis_y = top + PASS_HEADER - 6
    rows_height = max(1, len(timeline.rows)) * ROW_HEIGHT
    step = tick_step(span)
    tick = 0.0
    while tick <= span + 1e-9:
        x = left + tick * scale
        out.append(f"<line x1='{x:.1f}' y1='{axis_y:.1f}' x2='{x:.1f}' y2='{axis_y + rows_height:.1f}' "
                   f"stroke='#e4e4e4'/>")
        # spelt as the headline spells the pass's length; a round tick needs no decimals
        label = units.duration(tick) if 0 < tick < 1 else units.seconds(tick)
        out.append(_text(x, axis_y - 4, label, "text-anchor='middle' fill='#555'"))
        tick += step
    for index, row in enumerate(timeline.rows):
        y = axis_y + index * ROW_HEIGHT
        name = untrusted.safe(row.name)
        out.append(_text(MARGIN, y + 15, name if len(name) <= 24 else name[:23] + "\u2026"))  # the one ellipsis
        for phase in sorted(row.phases, key=lambda p: not p.is_wait):
            colour = FAILED if not phase.ok else COLOURS.get(phase.kind, UNKNOWN)
            x = left + (phase.started - timeline.started) * scale
            width = max(2.0, phase.seconds * scale)
            height = BAR_HEIGHT if not phase.is_wait else BAR_HEIGHT - 6
            tip = f"{row.name}: {phase.kind} {units.duration(phase.seconds)}" + (f" (failed: {phase.error})"
                                                                      if not phase.ok else "")
            out.append(f"<rect x='{x:.1f}' y='{y + (ROW_HEIGHT - height) / 2:.1f}' width='{width:.1f}' "
                       f"height='{height}' fill='{colour}'><title>{untrusted.message(tip, Sink.XML)}</title></rect>")
        out.append(_text(left + plot + 8, y + 15, row.outcome, f"fill='{outcome_colour(row.outcome)}'"))
    if not timeline.rows:
        out.append(_text(left, axis_y + 15, "no guest was handled", "fill='#555'"))
    return out, PASS_HEADER + rows_height + MARGIN


def _legend(top: float) -> tuple[list[str], float]:
    out, x, y = [], float(MARGIN), top
    for kind, label in LEGEND:
        item_width = 22 + 7 * len(label) + 18
        if x + item_width > WIDTH - MARGIN:
            x, y = float(MARGIN), y + 20
        colour = FAILED if kind == "failed" else COLOURS[kind]
        out.append(f"<rect x='{x:.1f}' y='{y:.1f}' width='16' height='12' fill='{colour}'/>")
        out.append(_text(x + 22, y + 11, label))
        x += item_width
    return out, y - top + 20 + MARGIN


def render(timelines: list[PassTimeline], title: str = "mgsave: the last passes") -> str:
    body: list[str] = []
    top = float(MARGIN)
    for timeline in timelines:
        elements, height = _pass(timeline, top)
        body += elements
        top += height
    elements, height = _legend(top)
    body += elements
    total = top + height
    return "\n".join([
        "<?xml version='1.0' encoding='UTF-8'?>",
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{total:.0f}' "
        f"viewBox='0 0 {WIDTH} {total:.0f}'>",
        f"<title>{untrusted.safe(title, Sink.XML)}</title>",
        f"<rect x='0' y='0' width='{WIDTH}' height='{total:.0f}' fill={quoteattr('#ffffff')}/>",
        *body,
        "</svg>",
    ]) + "\n"
