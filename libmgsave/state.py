"""The durable record of what each pass did, kept in the state directory.

A record is written atomically (temporary file, fsync, rename, fsync of the directory), so a
power loss leaves either the old or the new record, never half of one. The shutdown record is
written before the first guest is touched, so the list of guests that were running survives
even if mgsave is killed mid-pass.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from pathlib import Path

from libmgsave import __version__

log = logging.getLogger("mgsave")

RECORD_FORMAT = "mgsave-state"
RECORD_VERSION = 1
SHUTDOWN_RECORD = "last-shutdown.json"
BOOT_RECORD = "last-boot.json"
DEFAULT_STATE_DIR = "/var/lib/mgsave"

def state_dir_from(cli_value: str | None, environ) -> Path:
    """``--state-dir`` wins, then systemd's ``$STATE_DIRECTORY`` (first entry), then the default."""
    if cli_value:
        return Path(cli_value)
    from_systemd = environ.get("STATE_DIRECTORY")
    if from_systemd:
        return Path(from_systemd.split(":")[0])
    return Path(environ.get("MGSAVE_STATE_DIR") or DEFAULT_STATE_DIR)


def write_json_atomic(path: Path, data: dict) -> None:
    """Replace ``path`` with ``data`` as JSON so that readers see the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class RecordError(Exception):
    """A record exists but cannot be trusted (corrupt, or from an incompatible mgsave)."""


def read_record(path: Path, kind: str) -> dict | None:
    """The record at ``path``, or None when there is none.

    Raises RecordError when the file is unreadable, not JSON, not an mgsave record of this
    ``kind``, of a format version this mgsave does not know, or has a field of the wrong type:
    a damaged or hand-edited record is never trusted blindly, nor allowed to crash a pass.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise RecordError(f"{path}: cannot read: {error.strerror}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not valid JSON (not UTF-8 text); the file is corrupt") from None
    except (ValueError, RecursionError) as error:
        raise RecordError(f"{path}: not valid JSON ({error}); the file is corrupt") from None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or data.get("kind") != kind:
        raise RecordError(f"{path}: not an mgsave {kind} record")
    version = data.get("version")
    if version != RECORD_VERSION:
        raise RecordError(
            f"{path}: written by mgsave {data.get('mgsave_version', '?')} in record format {version!r}; "
            f"this mgsave {__version__} reads format {RECORD_VERSION} only"
        )
    if not isinstance(data.get("guests"), dict):
        raise RecordError(f"{path}: has no guest list; the file is corrupt")
    problem = _type_problem(data)
    if problem:
        raise RecordError(f"{path}: {problem}; the file is corrupt")
    return data


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _type_problem(data: dict) -> str | None:
    """What is wrong with the types of a record's fields, or None."""
    if not _is_number(data.get("started")):
        return f"'started' is {data.get('started')!r}, not a time"
    if data.get("finished") is not None and not _is_number(data["finished"]):
        return f"'finished' is {data['finished']!r}, not a time"
    if data.get("interrupted") is not None and not isinstance(data["interrupted"], str):
        return f"'interrupted' is {data['interrupted']!r}, not a signal name"
    throughput = data.get("measured_throughput")
    if throughput is not None and not (_is_number(throughput) and throughput > 0):
        return f"'measured_throughput' is {throughput!r}, not a positive number"
    for key, entry in data["guests"].items():
        if not isinstance(entry, dict) or not {"name", "uuid", "connection", "outcome"} <= entry.keys():
            return f"entry {key!r} is incomplete"
        for name in ("name", "uuid", "connection", "outcome"):
            if not isinstance(entry[name], str):
                return f"entry {key!r}: '{name}' is {entry[name]!r}, not a string"
        if key != guest_record_key(entry["connection"], entry["uuid"]):
            return f"entry {key!r} is filed under the wrong key (it describes {entry['name']!r})"
        memory = entry.get("memory_kib")
        if memory is not None and not (isinstance(memory, int) and not isinstance(memory, bool) and memory >= 0):
            return f"entry {key!r}: 'memory_kib' is {memory!r}, not a size"
        if entry.get("image") is not None and not isinstance(entry["image"], str):
            return f"entry {key!r}: 'image' is {entry['image']!r}, not a path"
        if entry.get("persistent") is not None and not isinstance(entry["persistent"], bool):
            return f"entry {key!r}: 'persistent' is {entry['persistent']!r}, not true or false"
    return None


def guest_record_key(connection: str, uuid: str) -> str:
    return f"{connection} {uuid.lower()}"


class RecordWriter:
    """Keeps one pass's record in memory and on disk.

    The first write is synchronous (the list of guests must be on disk before any is touched).
    Later updates are written by a background thread, at most every ``FLUSH_EVERY`` seconds,
    because each write costs an fsync: per guest, that made a pass over 300 instant saves take
    12 s. ``finish`` writes the final record synchronously.

    A write that fails (the state directory is read-only or full) never stops the pass: it is
    logged as an error, ``error`` says why, and the next update tries again.
    """

    FLUSH_EVERY = 0.5

    def __init__(self, path: Path, kind: str, data: dict):
        self.path = path
        self.kind = kind
        self.data = data
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._closing = threading.Event()  # wakes the writer from its pause at once
        self._closed = False
        self.error: str | None = None  # why the last write failed; None once one succeeds
        self._flusher = threading.Thread(target=self._flush_loop, name="mgsave-record", daemon=True)

    @classmethod
    def begin(cls, path: Path, kind: str, guests: dict[str, dict], extra: dict | None = None) -> RecordWriter:
        data = {
            "format": RECORD_FORMAT,
            "kind": kind,
            "version": RECORD_VERSION,
            "mgsave_version": __version__,
            "started": time.time(),
            "finished": None,
            "guests": guests,
        }
        data.update(extra or {})
        writer = cls(path, kind, data)
        writer.flush()
        writer._flusher.start()
        return writer

    def update_guest(self, key: str, **changes) -> None:
        with self._lock:
            self.data["guests"].setdefault(key, {}).update(changes)
        self._dirty.set()

    def finish(self, **changes) -> None:
        """Write the final record now and stop the background writer."""
        with self._lock:
            self.data.update(finished=time.time(), **changes)
            self._closed = True
        self._closing.set()
        self._dirty.set()
        if self._flusher.is_alive():
            self._flusher.join()
        self.flush()

    def flush(self) -> None:
        with self._lock:
            try:
                write_json_atomic(self.path, self.data)
            except OSError as error:
                reason = f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
                if self.error is None:
                    log.error("cannot write the %s record %s (%s); the pass goes on", self.kind, self.path, reason)
                self.error = reason
            else:
                if self.error is not None:
                    log.info("the %s record %s is written again", self.kind, self.path)
                self.error = None

    def _flush_loop(self) -> None:
        while True:
            self._dirty.wait()
            with self._lock:
                if self._closed:
                    return
            self._dirty.clear()
            self.flush()
            self._closing.wait(self.FLUSH_EVERY)
