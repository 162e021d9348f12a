"""Writing records: atomically, and (during a pass) in the background so that no save waits for an fsync."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from libmgsave import __version__
from libmgsave.safefiles import write_file
from libmgsave.state.records import RECORD_FORMAT, RECORD_VERSION

log = logging.getLogger("mgsave")


def write_json_atomic(path: Path, data: dict) -> None:
    """Replace ``path`` with ``data`` as JSON, durably (see ``safefiles.write_file``): the name is
    the record's own, so whatever else is there (a link planted in its place) is replaced, never
    written through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, json.dumps(data, indent=1, sort_keys=True) + "\n", replace_anything=True)


class RecordWriter:
    """Keeps one pass's record in memory and on disk.

    The first write is synchronous (the list of guests must be on disk before any is touched).
    Later updates are written by a background thread, at most every ``FLUSH_EVERY`` seconds,
    because each write costs an fsync: per guest, that made a pass over 300 instant saves take
    12 s. ``finish`` writes the final record synchronously.

    A write that fails (the state directory is read-only or full) never stops the pass: it is
    logged as an error, ``error`` says why, and the next update tries again.

    A writer made by ``amend`` adds a pass's entries to a record another pass wrote: its own
    times go under its own key (``by``), and each entry it adds says which pass wrote it.
    """

    FLUSH_EVERY = 0.5

    def __init__(self, path: Path, kind: str, data: dict, *, by: str | None = None, marks: dict | None = None):
        self.path = path
        self.kind = kind
        self.data = data
        self.by = by  # the key of this pass's own times, when it amends a record (None: it is the record's pass)
        self.marks = dict(marks or {})  # the fields every entry this pass adds gets
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
        return cls(path, kind, data)._started()

    @classmethod
    def amend(cls, path: Path, kind: str, record: dict | None, guests: dict[str, dict], *, by: str,
              extra: dict | None = None) -> RecordWriter:
        """Add ``guests`` to ``record`` (the record at ``path``, None: there is none) and write it:
        its other entries and its pass's times stay as they are; this pass's times go under ``by``."""
        now = time.time()
        if record is None:
            # no shutdown pass wrote one: the header is this pass's, of this boot (see carry_over)
            data = {"format": RECORD_FORMAT, "kind": kind, "version": RECORD_VERSION, "mgsave_version": __version__,
                    "started": now, "finished": now, "guests": {}, **(extra or {})}
        else:
            data = dict(record, guests=dict(record["guests"]))
        data[by] = {"started": now, "finished": None, **(extra or {})}
        writer = cls(path, kind, data, by=by, marks={"recorded_by": by, "recorded": now})
        for key, entry in guests.items():
            writer.data["guests"][key] = {**entry, **writer.marks}
        return writer._started()

    def _started(self) -> RecordWriter:
        self.flush()
        self._flusher.start()
        return self

    def add_guest(self, key: str, entry: dict) -> None:
        """A guest this pass takes up after its first write."""
        with self._lock:
            self.data["guests"][key] = {**entry, **self.marks}
        self._dirty.set()

    def update_guest(self, key: str, **changes) -> None:
        with self._lock:
            self.data["guests"].setdefault(key, {}).update(changes)
        self._dirty.set()

    def finish(self, **changes) -> None:
        """Write the final record now and stop the background writer."""
        with self._lock:
            (self.data if self.by is None else self.data[self.by]).update(finished=time.time(), **changes)
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
                reason = os_error_text(error)
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


def os_error_text(error: OSError) -> str:
    """Why a write failed, with the file it failed on."""
    return f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
