"""Standard output and error, which may fail: a full file system, a closed pipe, a console gone.

What mgsave prints is for people; what it does to the guests must never depend on it. At
shutdown the console or the journal's stream may be gone, and ``mgsave shutdown > file`` may
fill a disk: a write that fails (``OSError``, or ``ValueError`` for a stream already closed)
makes mgsave give that stream up for the rest of the process, say so once on the other one,
and carry on. Giving up points the stream's file descriptor at /dev/null, so that the
interpreter's own last flush at exit does not fail either (it would turn the exit code into 120).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

from libmgsave import untrusted

_given_up: dict[str, str] = {}  # "stdout" / "stderr" -> why it can no longer be written
_options = {"full": False}  # --full: never shorten a cell, not even on a terminal


def out(text: str) -> None:
    """``text`` and a newline on standard output, flushed; dropped when it cannot be written."""
    write("stdout", text + "\n")


def err(text: str) -> None:
    """``text`` and a newline on standard error, flushed; dropped when it cannot be written."""
    with above_live():
        write("stderr", text + "\n")


def write(name: str, text: str) -> None:
    if name in _given_up:
        return
    stream = getattr(sys, name)
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError) as error:
        give_up(name, error)


def give_up(name: str, error: BaseException) -> None:
    """Stop writing to ``sys.<name>`` for good, after ``error``; say so on the other stream."""
    if name in _given_up:
        return
    _given_up[name] = _why(error)
    _point_at_devnull(name)
    # Through the log: the journal when there is one, else standard error (skipped once given up).
    logging.getLogger("mgsave").warning("%s cannot be written (%s): carrying on without it", _NAMES[name],
                                        _given_up[name])


_NAMES = {"stdout": "standard output", "stderr": "standard error"}


# -- a terminal: colour and one live progress line ---------------------------------------------

COLOURS = {"red": "31", "green": "32", "yellow": "33"}


def is_terminal(name: str = "stdout") -> bool:
    """``sys.<name>`` is a terminal still written to (never the journal, a pipe or a file)."""
    if name in _given_up:
        return False
    try:
        return getattr(sys, name).isatty()
    except (AttributeError, ValueError, OSError):
        return False


def colour_allowed(name: str = "stdout") -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set to anything (no-color.org)."""
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb" and is_terminal(name)


def ellipsis(name: str = "stdout") -> str:
    """The mark of a text cut short, the one everywhere: ``…``, or ``~`` where ``sys.<name>``
    cannot write it."""
    encoding = (getattr(getattr(sys, name), "encoding", None) or "").lower().replace("-", "")
    return "\u2026" if encoding == "utf8" else "~"


def may_shorten() -> bool:
    """Whether a table may cut its cells to fit: only on a terminal, and never with ``--full``.
    Output to a pipe or a file is never shortened (``grep`` must find what it looks for)."""
    return not _options["full"] and is_terminal("stdout")


def paint(text: str, colour: str, name: str = "stdout") -> str:
    """``text`` in ``colour`` (a key of COLOURS) when ``sys.<name>`` may have colour, else as is."""
    if not colour_allowed(name):
        return text
    return f"\033[{COLOURS[colour]}m{text}\033[0m"


_live = {"text": ""}  # the progress line shown on standard error now, if any
# The progress thread redraws the line while other threads log: one at a time, or a log line
# would land in the middle of it.
_live_lock = threading.RLock()


def live(text: str) -> None:
    """Show ``text`` as the one progress line at the bottom of a terminal's standard error,
    replacing the last one; nothing when standard error is not a terminal (the journal, a file:
    they get one line per event, from the log, not a line per second)."""
    if not is_terminal("stderr"):
        return
    columns = _columns()
    text = untrusted.message(text)  # guest names in it: never an escape or a newline on the terminal
    text = text if len(text) < columns else text[: columns - 2] + ellipsis("stderr")
    with _live_lock:
        _live["text"] = text
        write("stderr", "\r\033[K" + text)


def clear_live() -> None:
    """Take the progress line away for good (nothing runs any more, the pass is over)."""
    with _live_lock:
        if _live["text"]:
            _live["text"] = ""
            write("stderr", "\r\033[K")


@contextlib.contextmanager
def above_live():
    """For a line written to standard error: the progress line is taken away before it and
    drawn again below it."""
    with _live_lock:
        shown = _live["text"] and is_terminal("stderr")
        if shown:
            write("stderr", "\r\033[K")
        try:
            yield
        finally:
            if shown:
                write("stderr", _live["text"])


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


def given_up() -> dict[str, str]:
    """The streams given up, and why."""
    return dict(_given_up)


def reset(*, full: bool = False) -> None:
    """Forget the streams given up (tests run several commands in one process); ``full``: the
    command's ``--full``, for ``may_shorten``."""
    _given_up.clear()
    _options["full"] = full
    _live["text"] = ""


def _why(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _point_at_devnull(name: str) -> None:
    stream = getattr(sys, name)
    with contextlib.suppress(OSError, ValueError):
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
        return
    # No file descriptor of its own (a stream object put there by an embedding program): replace it.
    setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
