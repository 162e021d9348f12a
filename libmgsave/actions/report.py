"""``mgsave report``: the last shutdown and boot passes as a timeline per guest.

Read from the records in the state directory; in the terminal a bar chart, with ``--svg FILE``
also a picture. It shows where the time went: waiting for other guests or for a slot, saving,
the fallback steps, resuming, the readiness checks; and how many saves or starts ran at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from libmgsave import console, jsonout
from libmgsave.actions import DONE, Done
from libmgsave.context import Context
from libmgsave.errors import ExitCode, MgsaveError
from libmgsave.safefiles import UnsafeFile, write_file
from libmgsave.state.writer import os_error_text
from libmgsave.timeline import PassTimeline, from_record, svg, text

log = logging.getLogger("mgsave")


class ReportNotWritten(MgsaveError):
    """The SVG file could not be written."""

    exit_code = ExitCode.BAD_INPUT


def last_passes(ctx: Context) -> list[PassTimeline]:
    """The last shutdown pass, then the last boot pass (those there are records of)."""
    warnings: list[str] = []
    timelines = [from_record(ctx.state.last_shutdown(quiet=True, warnings=warnings), "shutdown"),
                 from_record(ctx.state.last_boot(quiet=True, warnings=warnings), "boot")]
    for warning in warnings:
        log.warning("%s", warning)
    return [t for t in timelines if t is not None]


def run_report(ctx: Context, *, svg_path: str | None = None) -> Done:
    """``svg_path``: also draw the timeline into this file."""
    timelines = last_passes(ctx)
    if svg_path:
        _write_svg(Path(svg_path), svg.render(timelines))
    if not timelines:
        console.err(f"no pass recorded in {ctx.state.path} yet")
    ctx.emit(jsonout.document("report", {"passes": [t.to_dict() for t in timelines], "svg_path": svg_path}),
             text.render_all(timelines) if timelines else "")
    return DONE


def _write_svg(path: Path, picture: str) -> None:
    """Replace ``path`` with the picture, atomically, never through a link or into a FIFO."""
    try:
        write_file(path, picture, mode=0o644, durable=False)
    except UnsafeFile as why:
        raise ReportNotWritten(f"cannot write {path}: {why}", "name a regular file's path") from None
    except OSError as error:
        raise ReportNotWritten(f"cannot write {path}: {os_error_text(error)}") from None
