"""Every per-guest setting in one table: how it is built from the file and how it is written out.

``plan``, ``--json``, the record and the docs all write a setting through ``setting_to_json``
(the file's own spelling) or ``setting_text`` (the same, for a table cell), so a setting is
spelt one way everywhere. Adding a setting means a field in ``policy.GuestSettings``, its
schema entry and one line in ``SETTINGS`` here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from libmgsave.policy import (SETTING_NAMES, Autostart, Channels, DiskMode, ImageFormat, Migrate, OnResumeFailure,
                              Ready, ReadyKind, SameChain, ShutdownStep)

AGENT_READY_TIMEOUT = 120.0  # ``ready: agent`` without a timeout

# systemd.time(7)'s units from a second to a week; each spelling's length in seconds. The
# alternation tries the longer spellings first, so that a part's unit is read whole (``min``,
# not ``m`` followed by garbage).
_UNITS = {
    **dict.fromkeys(("seconds", "second", "sec", "s"), 1.0),
    **dict.fromkeys(("minutes", "minute", "min", "m"), 60.0),
    **dict.fromkeys(("hours", "hour", "hr", "h"), 3600.0),
    **dict.fromkeys(("days", "day", "d"), 86400.0),
    **dict.fromkeys(("weeks", "week", "w"), 604800.0),
}
_NUMBER = r"[0-9]+(\.[0-9]+)?"
_UNIT = "(" + "|".join(sorted(_UNITS, key=lambda u: (-len(u), u))) + ")"
# The one spelling of a duration string, also in policy.schema.yaml's $defs (a test compares them):
# a bare number of seconds, or parts of a number and a unit, with spaces allowed around a unit:
# 90, 90s, 5m, 1h30m, 1h 30min, 2 days.
DURATION_PATTERN = f"^({_NUMBER}|{_NUMBER} *{_UNIT}( *{_NUMBER} *{_UNIT})*)$"
_PART = re.compile(f"({_NUMBER}) *{_UNIT}")


def parse_duration(value: int | float | str) -> float:
    """Seconds in a duration as the policy spells it: ``90``, ``2.5``, ``"90s"``, ``"5m"``,
    ``"1h30m"``, or with systemd's units and spaces: ``"1h 30min"``, ``"2 days"``, ``"1w"``.

    Raises ``ValueError`` for anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"not a duration: {value!r}")
    if not re.search("[a-z]", text):
        return float(text)
    return sum(float(match[1]) * _UNITS[match[3]] for match in _PART.finditer(text))


def _ready(value: object) -> Ready:
    if value == "none":
        return Ready()
    if value == "agent":
        return Ready(ReadyKind.AGENT, AGENT_READY_TIMEOUT)
    if isinstance(value, dict):
        return Ready(ReadyKind.AGENT, parse_duration(value["agent"]))
    return Ready(ReadyKind.DELAY, parse_duration(value))  # type: ignore[arg-type]


def _migrate(value: object) -> Migrate:
    mapping = dict(value)  # type: ignore[call-overload]
    default = Migrate()
    return Migrate(
        peers=tuple(str(uri) for uri in mapping.get("peers", ())),
        live=bool(mapping.get("live", default.live)),
        timeout=parse_duration(mapping.get("timeout", default.timeout)),
        bandwidth=None if mapping.get("bandwidth") is None else int(mapping["bandwidth"]),
        disks=DiskMode(mapping.get("disks", default.disks)),
        come_back=bool(mapping.get("come_back", default.come_back)),
        home=mapping.get("home"),
    )


def migrate_to_json(value: Migrate) -> dict:
    return {"peers": list(value.peers), "live": value.live, "timeout": value.timeout,
            "bandwidth": value.bandwidth, "disks": value.disks.value, "come_back": value.come_back,
            "home": value.home}


def setting_to_json(value: object) -> object:
    """A setting's value as the policy file spells it, for JSON output."""
    if isinstance(value, Migrate):
        return migrate_to_json(value)
    if isinstance(value, Ready):
        if value.kind is ReadyKind.NONE:
            return "none"
        if value.kind is ReadyKind.DELAY:
            return value.seconds
        return {"agent": value.seconds}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [setting_to_json(item) for item in value]
    return value


def duration_text(seconds: float) -> str:
    """A duration as the policy spells it, in systemd's units: ``90s`` is ``1min 30s``,
    ``600`` is ``10min``, ``5400`` is ``1h 30min``, ``0.5`` is ``0.5s``; ``parse_duration``
    reads it back to the same seconds."""
    if seconds <= 0:
        return "0"
    parts, rest = [], float(seconds)
    for unit, scale in (("d", 86400), ("h", 3600), ("min", 60)):
        whole = int(rest // scale)
        if whole:
            parts.append(f"{whole}{unit}")
            rest -= whole * scale
    if rest or not parts:
        parts.append(f"{rest:.3f}".rstrip("0").rstrip(".") + "s")
    return " ".join(parts)


def setting_text(value: object) -> str:
    """A setting's value in a line of text (``mgsave plan --verbose``), as the policy file
    spells it: ``true``, ``10min``, ``[dns, db]``, ``[]``, ``{agent: 2min}``."""
    if isinstance(value, tuple | list):
        return "[" + ", ".join(setting_text(item) for item in value) + "]"
    if isinstance(value, Migrate):
        if not value.peers:
            return "no peers"
        extra = [] if value.live else ["offline"]
        extra += [f"{value.bandwidth} MiB/s"] if value.bandwidth else []
        extra += ["copy disks"] if value.disks is DiskMode.COPY else []
        extra += ["comes back"] if value.come_back else []
        extra += [f"timeout {duration_text(value.timeout)}"]
        return ", ".join(value.peers) + f" ({', '.join(extra)})"
    if isinstance(value, Ready):
        if value.kind is ReadyKind.AGENT and value.seconds != AGENT_READY_TIMEOUT:
            return f"{{agent: {duration_text(value.seconds)}}}"
        return "agent" if value.kind is ReadyKind.AGENT else setting_text(setting_to_json(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):  # every float setting is a duration (save_timeout, ready: 30s...)
        return duration_text(value)
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


@dataclass(frozen=True)
class Setting:
    """One per-guest setting of the schema, and how its value is built."""
    name: str
    build: Callable[[object], object]  # the checked YAML value -> the model's value


SETTINGS = {s.name: s for s in (
    Setting("autostart", Autostart),
    Setting("on_shutdown", lambda value: tuple(ShutdownStep(step) for step in value)),
    Setting("on_reboot", lambda value: SameChain(value) if isinstance(value, str)
            else tuple(ShutdownStep(step) for step in value)),
    Setting("order", int),
    Setting("priority", int),
    Setting("after", lambda value: tuple(str(name) for name in value)),
    Setting("ready", _ready),
    Setting("save_timeout", parse_duration),
    Setting("shutdown_timeout", parse_duration),
    Setting("bypass_cache", bool),
    Setting("sync_time", bool),
    Setting("on_resume_failure", OnResumeFailure),
    Setting("save_channels", lambda value: Channels.AUTO if value == "auto" else int(value)),
    Setting("image_format", ImageFormat),
    Setting("migrate", _migrate),
)}
assert set(SETTINGS) == set(SETTING_NAMES), "the settings table and GuestSettings disagree"


def build_settings(mapping: Mapping[str, object]) -> Mapping[str, object]:
    """The settings a ``defaults:`` mapping or a rule gives, as model values."""
    return MappingProxyType({key: SETTINGS[key].build(mapping[key]) for key in SETTING_NAMES if key in mapping})
