"""The frame of every ``--json`` output: its format's name and version, and times as ISO 8601.

Each output has a JSON Schema (draft 2020-12) in ``libmgsave/schemas/<format>.schema.json``,
installed in /usr/share/mgsave/schemas/. The promise (README, "JSON output"): ``format_version``
is bumped on any incompatible change (a field removed, renamed or given another type or
meaning); fields may be added at any time, so readers must ignore those they do not know.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping

FORMAT_VERSION = 1
# The name of each command's output; a test checks every one has its schema.
FORMATS = ("plan", "status", "check", "images", "images-remove", "report", "pass")


def document(format_name: str, body: Mapping[str, object]) -> dict:
    """``body`` under its format's name and version."""
    assert format_name in FORMATS, format_name
    return {"format": f"mgsave.{format_name}", "format_version": FORMAT_VERSION, **body}


def word(value: object) -> str:
    """A closed-set value as one word: libvirt's states are spelt for people ("shut off"); in
    JSON they are written as every other value of mgsave's, with hyphens ("shut-off")."""
    return str(value).replace(" ", "-")


def timestamp(epoch: float | None) -> str | None:
    """An epoch time as ISO 8601 in UTC, to the microsecond: ``2026-12-02T00:45:00.123456Z``.
    Always that wide, so that the strings sort as the times do (steps begun in the same
    millisecond keep their order)."""
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def epoch(text: str) -> float:
    """The epoch time of a ``timestamp``."""
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC).timestamp()


# The outer levels (the document, its lists) are laid out one member a line; what lies deeper (a
# guest, a step) is written on one line by the json module's C encoder. json.dumps with an
# indent encodes token by token in Python instead: for 10,000 guests' status, 600,000 calls and
# most of mgsave's own time.
_INDENTED_LEVELS = 2


def dumps(value: object, *, default=str, _level: int = 0) -> str:  # noqa: ANN001
    """``value`` as JSON text: the first two levels indented by two spaces, deeper values on
    one line each (the same data as ``json.dumps``; readers parse it, never its layout)."""
    if _level >= _INDENTED_LEVELS or not isinstance(value, (dict, list)) or not value:
        return json.dumps(value, default=default)
    inner = "  " * (_level + 1)
    if isinstance(value, dict):
        members = (f"{inner}{_key(key)}: {dumps(item, default=default, _level=_level + 1)}"
                   for key, item in value.items())
        return "{\n" + ",\n".join(members) + "\n" + "  " * _level + "}"
    members = (f"{inner}{dumps(item, default=default, _level=_level + 1)}" for item in value)
    return "[\n" + ",\n".join(members) + "\n" + "  " * _level + "]"


def _key(key: object) -> str:
    """A member's name as json.dumps writes it (a number or a constant as a string)."""
    return json.dumps(key if isinstance(key, str) else json.dumps(key))
