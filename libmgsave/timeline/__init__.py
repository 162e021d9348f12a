"""The last shutdown and boot passes drawn as timelines, for ``mgsave report``.

    model  the records' steps and waits as phases per guest (pure)
    text   a bar chart for the terminal, 80 columns
    svg    the same as an SVG picture, written by hand

Nothing here is imported by the passes.
"""

from libmgsave.timeline.model import PassTimeline, Phase, Row, from_record

__all__ = ["PassTimeline", "Phase", "Row", "from_record"]
