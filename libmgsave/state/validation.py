"""Whether a record read from the state directory may be used: the file itself, then every field.

A record is data from disk, so it is checked before anything uses it: the file must be a
regular file of a sane size, opened without following a symlink and without blocking (a FIFO
in its place would hang the pass), and every field of every entry must have its type. An
entry's ``image`` is only ever ``<state>/images/<uuid>.save`` of that entry's guest: a record
naming any other path is untrusted, so no record can make mgsave restore, keep or remove a
file elsewhere.
"""

from __future__ import annotations

import enum
import math
import os
import re
from pathlib import Path

from libmgsave.outcomes import Outcome
from libmgsave.safefiles import UnsafeFile, read_small_file  # noqa: F401 - UnsafeFile: for records

# A record of 10,000 guests is a few MiB; anything far larger is not one of ours.
MAX_RECORD_BYTES = 64 * 1024 * 1024

UUID_PATTERN = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_OUTCOMES = frozenset(str(o) for o in Outcome)


class RecordedBy(enum.StrEnum):
    """The passes that add entries of their own to the shutdown record besides the shutdown
    pass (whose entries say nothing of it): what they did stands beside the shutdown pass's
    entries for the other guests, never in their place."""

    EVACUATE = "evacuate"
    RETURN = "return"


_RECORDED_BY = frozenset(str(b) for b in RecordedBy)


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of the record at ``path`` (see ``safefiles.read_small_file``: never through a
    link, never blocking, at most ``max_bytes``)."""
    return read_small_file(path, max_bytes)


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# Each optional field of a record (top level) or of an entry: what it must be, and how to say it.
_RECORD_FIELDS = {
    "mgsave_version": (lambda v: isinstance(v, str), "a version"),
    "finished": (lambda v: v is None or is_number(v), "a time"),
    "interrupted": (lambda v: v is None or isinstance(v, str), "a signal name"),
    "measured_throughput": (lambda v: v is None or (is_number(v) and v > 0), "a positive number"),
    "ok": (lambda v: v is None or isinstance(v, bool), "true or false"),
    "boot_id": (lambda v: v is None or isinstance(v, str), "a boot ID"),
}
_ENTRY_FIELDS = {
    "persistent": (lambda v: v is None or isinstance(v, bool), "true or false"),
    "state": (lambda v: v is None or isinstance(v, str), "a state"),
    "memory_kib": (lambda v: v is None or _is_count(v), "a size"),
    "title": (lambda v: v is None or isinstance(v, str), "a string"),
    "metadata": (lambda v: v is None or (isinstance(v, dict) and all(isinstance(x, str) for x in v.values())),
                 "a table of strings"),
    "planned": (lambda v: v is None or _is_strings(v), "a list of actions"),
    "steps": (lambda v: v is None or (isinstance(v, list) and all(_step_problem(s) is None for s in v)),
              "a list of steps"),
    "started": (lambda v: v is None or is_number(v), "a time"),
    "finished": (lambda v: v is None or is_number(v), "a time"),
    "bytes": (lambda v: v is None or _is_count(v), "a size"),
    "waits": (lambda v: v is None or (isinstance(v, list) and all(_wait_problem(w) is None for w in v)),
              "a list of waits"),
    "messages": (lambda v: v is None or _is_strings(v), "a list of strings"),
    "note": (lambda v: v is None or isinstance(v, str), "a string"),
    "ok": (lambda v: v is None or isinstance(v, bool), "true or false"),
    "image_used": (lambda v: v is None or isinstance(v, bool), "true or false"),
    "image": (lambda v: v is None or isinstance(v, str), "a path"),
    "peer": (lambda v: v is None or isinstance(v, str), "a libvirt URI"),
    "recorded_by": (lambda v: v is None or v in _RECORDED_BY, "a pass that adds entries (evacuate, return)"),
    "recorded": (lambda v: v is None or is_number(v), "a time"),
}


def _wait_problem(wait) -> str | None:
    if not isinstance(wait, dict) or not isinstance(wait.get("kind", ""), str):
        return "not a wait"
    if any(wait.get(name) is not None and not is_number(wait[name]) for name in ("started", "finished")):
        return "not a wait"
    return None


def _step_problem(step) -> str | None:
    if not isinstance(step, dict) or not isinstance(step.get("action"), str) or not isinstance(step.get("ok"), bool):
        return "not a step"
    for name in ("started", "finished"):
        if step.get(name) is not None and not is_number(step[name]):
            return "not a step"
    if step.get("error") is not None and not isinstance(step["error"], str):
        return "not a step"
    return None


def record_problem(data: dict, state_dir: Path, key_of) -> str | None:
    """What is wrong with the fields of a record (already known to be an mgsave record with a
    guest table), or None. ``key_of(connection, uuid)`` is the key an entry must be filed under."""
    if not is_number(data.get("started")):
        return f"'started' is {data.get('started')!r}, not a time"
    for name, (valid, what) in _RECORD_FIELDS.items():
        if name in data and not valid(data[name]):
            return f"'{name}' is {data[name]!r}, not {what}"
    for by in _RECORDED_BY:  # the last evacuate's or return's own times, beside the shutdown pass's
        problem = _header_problem(by, data[by]) if by in data else None
        if problem:
            return problem
    for key, entry in data["guests"].items():
        problem = _entry_problem(key, entry, state_dir, key_of)
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


def _entry_problem(key: str, entry, state_dir: Path, key_of) -> str | None:
    if not isinstance(entry, dict) or not {"name", "uuid", "connection", "outcome"} <= entry.keys():
        return f"entry {key!r} is incomplete"
    for name in ("name", "uuid", "connection", "outcome"):
        if not isinstance(entry[name], str):
            return f"'{name}' is {entry[name]!r}, not a string"
    if not UUID_PATTERN.match(entry["uuid"]):
        return f"'uuid' is {entry['uuid']!r}, not a UUID"
    if entry["outcome"] not in _OUTCOMES:
        return f"'outcome' is {entry['outcome']!r}, not an outcome mgsave knows"
    if key != key_of(entry["connection"], entry["uuid"]):
        return f"entry {key!r} is filed under the wrong key (it describes {entry['name']!r})"
    for name, (valid, what) in _ENTRY_FIELDS.items():
        if name in entry and not valid(entry[name]):
            return f"'{name}' is {entry[name]!r}, not {what}"
    image, expected = entry.get("image"), transient_image_path(state_dir, entry["uuid"])
    # The same file under another spelling of the state directory's path (a symlink to it) is
    # still this guest's; ``canonical_images`` then names it as this mgsave would.
    if image is not None and image != str(expected) and os.path.realpath(image) != os.path.realpath(expected):
        return f"'image' is {image!r}, not this guest's save file {expected} (a record never names a file elsewhere)"
    return None


def canonical_images(data: dict, state_dir: Path) -> None:
    """Name every entry's image as ``<state>/images/<uuid>.save`` under the path mgsave uses now:
    what the passes then act on is never the record's text."""
    for entry in data["guests"].values():
        if entry.get("image") is not None:
            entry["image"] = str(transient_image_path(state_dir, entry["uuid"]))


def transient_image_path(state_dir: Path, uuid: str) -> Path:
    """The one place a transient guest's save file may be: ``<state>/images/<uuid>.save``."""
    return state_dir / "images" / f"{uuid.lower()}.save"
