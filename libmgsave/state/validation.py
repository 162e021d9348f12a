"""Whether a record read from the state directory may be used: the file itself, then every field.

A record is data from disk, so it is checked before anything uses it: the file must be a
regular file of a sane size, opened without following a symlink and without blocking (a FIFO
in its place would hang the pass), and every field of every entry must have its type. An
entry's ``image`` is only ever ``<state>/images/<uuid>.save`` of that entry's guest: a record
naming any other path is untrusted, so no record can make mgsave restore, keep or remove a
file elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from libmgsave.history import EntryError, GuestEntry, HostShutdown, RecordedBy, battery_decisions, is_number
from libmgsave.safefiles import UnsafeFile, read_small_file  # noqa: F401 - UnsafeFile: for records
from libmgsave.saveimages import transient_image_path

# A record of 10,000 guests is a few MiB; anything far larger is not one of ours.
MAX_RECORD_BYTES = 64 * 1024 * 1024


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of the record at ``path`` (see ``safefiles.read_small_file``: never through a
    link, never blocking, at most ``max_bytes``)."""
    return read_small_file(path, max_bytes)


# Each optional field of a record (top level): what it must be, and how to say it (an entry's: ``history``).
_RECORD_FIELDS = {
    "mgsave_version": (lambda v: isinstance(v, str), "a version"),
    "finished": (lambda v: v is None or is_number(v), "a time"),
    "interrupted": (lambda v: v is None or isinstance(v, str), "a signal name"),
    "measured_throughput": (lambda v: v is None or (is_number(v) and v > 0), "a positive number"),
    "ok": (lambda v: v is None or isinstance(v, bool), "true or false"),
    "boot_id": (lambda v: v is None or isinstance(v, str), "a boot ID"),
    "host_shutdown": (lambda v: v is None or _is_host_shutdown(v), "a kind of shutdown and why"),
    "battery": (lambda v: _is_battery(v), "a list of decisions on the battery"),
}


def _is_host_shutdown(value) -> bool:
    try:
        HostShutdown.from_dict(value)
    except EntryError:
        return False
    return True


def _is_battery(value) -> bool:
    try:
        battery_decisions(value)
    except EntryError:
        return False
    return True


def record_problem(data: dict, state_dir: Path) -> str | None:
    """What is wrong with the fields of a record (already known to be an mgsave record with a
    guest table), or None. Each entry must be filed under its ``history.guest_record_key``."""
    if not is_number(data.get("started")):
        return f"'started' is {data.get('started')!r}, not a time"
    for name, (valid, what) in _RECORD_FIELDS.items():
        if name in data and not valid(data[name]):
            return f"'{name}' is {data[name]!r}, not {what}"
    for by in RecordedBy:  # the last evacuate's or return's own times, beside the shutdown pass's
        problem = _header_problem(by, data[by]) if by in data else None
        if problem:
            return problem
    for key, entry in data["guests"].items():
        problem = _entry_problem(key, entry, state_dir)
        if problem:
            return f"entry {key!r}: {problem}" if not problem.startswith("entry") else problem
    return None


def _header_problem(by: str, header) -> str | None:
    if not isinstance(header, dict) or not is_number(header.get("started")):
        return f"'{by}' is {header!r}, not the times of an {by} pass"
    for name, (valid, what) in _RECORD_FIELDS.items():
        if name in header and not valid(header[name]):
            return f"'{by}.{name}' is {header[name]!r}, not {what}"
    return None


def _entry_problem(key: str, entry, state_dir: Path) -> str | None:
    try:
        typed = GuestEntry.from_dict(entry, key)
    except EntryError as problem:
        return str(problem)
    image = typed.image
    if image is None:  # most entries: no file of the state directory's to check
        return None
    expected = transient_image_path(state_dir, typed.uuid)
    # The same file under another spelling of the state directory's path (a symlink to it) is
    # still this guest's; ``canonical_images`` then names it as this mgsave would.
    if os.path.realpath(image) != os.path.realpath(expected):
        return f"'image' is {image!r}, not this guest's save file {expected} (a record never names a file elsewhere)"
    return None


def canonical_images(data: dict, state_dir: Path) -> None:
    """Name every entry's image as ``<state>/images/<uuid>.save`` under the path mgsave uses now:
    what the passes then act on is never the record's text."""
    for entry in data["guests"].values():
        if entry.get("image") is not None:
            entry["image"] = str(transient_image_path(state_dir, entry["uuid"]))
