"""Logging: to the systemd journal with structured fields under systemd, plain stderr otherwise.

Every module logs through ``logging.getLogger("mgsave")`` (or a child of it) and passes
per-guest fields as ``extra=journal.guest_fields(guest, action=..., result=...)``. Under
systemd those fields become journal fields, so ``journalctl -u mgsave MGSAVE_GUEST=db1``
shows one guest's history; on a terminal (or a console at shutdown) they are left out and
the line reads ``mgsave: message``.

``systemd.journal`` (systemd-python) is imported only when the journal is actually used,
and its absence is never an error: mgsave then logs to stderr, which systemd also forwards
to the journal, with the priority carried in an ``<N>`` prefix. Either way, what others wrote
(guest names, libvirt's errors) is escaped and bounded first (``UntrustedText``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from libmgsave import console, untrusted

LOGGER_NAME = "mgsave"
SYSLOG_IDENTIFIER = "mgsave"
JOURNAL_SOCKET = "/run/systemd/journal/socket"

# MESSAGE_IDs (random 128-bit ids, generated once, never to change) mark
# the start and end of a pass, so that ``journalctl MESSAGE_ID=...`` lists every pass.
PASS_START = "1dee8e0a38b3499e9f4a1adbf98d90c5"
PASS_END = "3ebcae7711ee49e692ef5f51a7dd88b6"
# A guest's outcome when it did not get its first choice (priority warning), or failed (err).
GUEST_DEGRADED = "1dc6d51bca0a4ebea1ef620ce1b737cb"
GUEST_FAILED = "eb1f7d33b47649d7ae9a0ca9fb98eb16"

_FIELD_NAME = re.compile(r"^[A-Z0-9][A-Z0-9_]*$")  # journald drops anything else (and "_" leads are trusted)

# logging level -> syslog priority, as journald and the sd-daemon "<N>" prefix want it.
_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)


def syslog_priority(levelno: int) -> int:
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7  # debug


def guest_fields(
    guest: Any = None,
    *,
    action: object = None,
    result: object = None,
    seconds: float | None = None,
    bytes_: int | None = None,
) -> dict[str, object]:
    """The structured fields for one guest's log line, for ``logger.info(msg, extra=...)``.

    ``guest`` is a ``GuestInfo`` or anything with ``.name``, ``.uuid`` and ``.connection``.
    Values that are None are left out; enums are given by their value.
    """
    fields: dict[str, object] = {}
    if guest is not None:
        fields["MGSAVE_GUEST"] = guest.name
        fields["MGSAVE_UUID"] = guest.uuid
        fields["MGSAVE_CONNECTION"] = guest.connection
    if action is not None:
        fields["MGSAVE_ACTION"] = str(action)
    if result is not None:
        fields["MGSAVE_RESULT"] = str(result)
    if seconds is not None:
        fields["MGSAVE_SECONDS"] = round(float(seconds), 3)
    if bytes_ is not None:
        fields["MGSAVE_BYTES"] = int(bytes_)
    return fields


class UntrustedText(logging.Filter):
    """Every log line's arguments and ``MGSAVE_*`` fields escaped and bounded (``untrusted``): they
    carry guest names and libvirt's, agents' and peers' error texts, which must not forge a line
    (a newline), drive the terminal (an escape) or reverse the text (a bidi override). The format
    strings are mgsave's own; numbers pass as they are, for ``%d``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "mgsave_safe", False):  # another handler made it safe already
            return True
        record.mgsave_safe = True
        if isinstance(record.args, tuple):
            record.args = tuple(_safe_argument(a) for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: _safe_argument(v) for k, v in record.args.items()}
        for key, value in record_fields(record).items():  # names, UUIDs, URIs: a name's bound
            setattr(record, key, value if isinstance(value, int | float) else untrusted.safe(value))
        return True


def _safe_argument(value: object) -> object:
    return value if isinstance(value, int | float) else untrusted.message(value)


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    """The journal fields a record carries in its ``extra``: every attribute named like one."""
    return {k: v for k, v in vars(record).items() if _FIELD_NAME.match(k) and v is not None}


class StderrFormatter(logging.Formatter):
    """``mgsave: message``, with the level named for warnings, errors and debug lines.

    With ``priority_prefix`` (stderr is a journal stream) the line starts with ``<N>`` instead,
    which journald turns into the entry's priority; the identifier comes from the unit then.
    """

    def __init__(self, priority_prefix: bool = False):
        super().__init__()
        self.priority_prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.priority_prefix:
            prefix = f"<{syslog_priority(record.levelno)}>"
            return "\n".join(prefix + line for line in text.splitlines() or [""])
        level = "" if record.levelno == logging.INFO else record.levelname.lower() + ": "
        return f"{SYSLOG_IDENTIFIER}: {level}{text}"


class StderrHandler(logging.StreamHandler):
    """Log lines on standard error; when it cannot be written (a closed pipe, a full disk, a
    console gone at shutdown), ``console`` gives it up and the pass goes on without them."""

    def __init__(self):
        super().__init__(sys.stderr)
        self.addFilter(UntrustedText())

    def emit(self, record: logging.LogRecord) -> None:
        if "stderr" in console.given_up():
            return
        self.stream = sys.stderr  # the stream in place now, not the one at setup
        with console.above_live():  # a terminal's progress line goes below the log line
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        error = sys.exc_info()[1]
        if isinstance(error, OSError | ValueError):
            console.give_up("stderr", error)
        else:
            super().handleError(record)


Sender = Callable[..., None]


class JournalHandler(logging.Handler):
    """Sends each record to the journal natively, its ``MGSAVE_*``/``MESSAGE_ID`` extras as fields.

    ``sender`` is ``systemd.journal.send`` (or a stand-in in tests): called with ``MESSAGE=``
    and the other fields as keyword arguments.
    """

    def __init__(self, sender: Sender, identifier: str = SYSLOG_IDENTIFIER):
        super().__init__()
        self.addFilter(UntrustedText())
        self.sender = sender
        self.identifier = identifier
        self.setFormatter(logging.Formatter("%(message)s"))
        # When journald is gone (late in shutdown) a line on stderr still beats silence.
        self.fallback = StderrHandler()
        self.fallback.setFormatter(StderrFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, object] = {
                "PRIORITY": syslog_priority(record.levelno),
                "SYSLOG_IDENTIFIER": self.identifier,
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": record.lineno,
                "CODE_FUNC": record.funcName,
            }
            fields.update(record_fields(record))
            fields = {k: str(v) for k, v in fields.items()}
            self.sender(MESSAGE=self.format(record), **fields)
        except OSError:
            self.fallback.handle(record)
        except Exception:  # noqa: BLE001 - logging must never take the pass down
            self.handleError(record)


def stderr_is_journal(environ: Mapping[str, str] | None = None, stream: Any = None) -> bool:
    """True when stderr is the journal stream systemd connected us to (``JOURNAL_STREAM``)."""
    environ = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream
    value = environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def under_systemd(environ: Mapping[str, str] | None = None, socket_path: str = JOURNAL_SOCKET) -> bool:
    """True when systemd started us and a journald listens: the journal is worth using."""
    environ = os.environ if environ is None else environ
    started_by_systemd = bool(environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"))
    return started_by_systemd and os.path.exists(socket_path)


def _journal_sender() -> Sender | None:
    try:
        from systemd import journal as systemd_journal  # lazy: only a service pays for it
    except ImportError:
        return None

    def send(**fields: str) -> None:
        # sendv takes the fields as they go on the wire; send() would insist on an int CODE_LINE.
        systemd_journal.sendv(*(f"{key}={value}" for key, value in fields.items()))

    return send


def setup_logging(debug: bool = False, *, use_journal: bool | None = None) -> None:
    """Configure the ``mgsave`` logger once per process (calling again replaces the handler).

    ``use_journal`` None means: the journal when running under systemd and systemd-python
    imports, stderr otherwise. Debug lines are shown only with ``debug``.
    """
    logger = logging.getLogger(LOGGER_NAME)
    for installed in [h for h in logger.handlers if getattr(h, "mgsave_setup", False)]:
        logger.removeHandler(installed)  # the one an earlier call installed; others' (tests') stay

    handler: logging.Handler | None = None
    if use_journal is None:
        use_journal = under_systemd()
    if use_journal:
        sender = _journal_sender()
        if sender is not None:
            handler = JournalHandler(sender)
    if handler is None:
        handler = StderrHandler()
        handler.setFormatter(StderrFormatter(priority_prefix=stderr_is_journal()))

    handler.mgsave_setup = True
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
