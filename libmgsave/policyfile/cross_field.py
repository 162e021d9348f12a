"""What the schema cannot say: durations written as strings, a guest waiting for itself."""

from __future__ import annotations

import math
import re

import jsonschema

from libmgsave.errors import Problem
from libmgsave.policy import DEADLINE_RESERVE, MAX_DURATION, Limits, Power
from libmgsave.policyfile.build import power_section, ups_address
from libmgsave.policyfile.marks import KeyPath, MarkedDocument, format_path
from libmgsave.policyfile.schema_errors import PathSet, Reporter, describe, policy_schema, section_is_valid
from libmgsave.policyfile.settings import parse_duration

_POSITIVE_DURATIONS = ("save_timeout", "shutdown_timeout")
_GLOB_CHARS = re.compile(r"[*?\[]")


def cross_field_problems(document: object, marks: MarkedDocument, bad: set[str]) -> list[Problem]:
    if not isinstance(document, dict):
        return []
    reporter = Reporter(marks)
    reported = PathSet(bad)

    def clean(path: KeyPath) -> bool:
        return not reported.touches(format_path(path))

    def duration(path: KeyPath, value: object, *, zero_ok: bool = False, longer_than: float = 0.0) -> None:
        if not clean(path):
            return
        try:
            seconds = parse_duration(value)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            return
        problem = duration_problem(seconds, zero_ok=zero_ok, longer_than=longer_than)
        if problem:
            reporter.at(path, f"{problem}, not {describe(value)}")

    def settings(path: KeyPath, mapping: object) -> None:
        if not isinstance(mapping, dict):
            return
        for key in _POSITIVE_DURATIONS:
            if key in mapping:
                duration((*path, key), mapping[key])
        ready = mapping.get("ready")
        if isinstance(ready, dict) and "agent" in ready:
            duration((*path, "ready", "agent"), ready["agent"])
        elif ready is not None and ready not in ("none", "agent"):
            duration((*path, "ready"), ready)
        migrate = mapping.get("migrate")
        if isinstance(migrate, dict) and "timeout" in migrate:
            duration((*path, "migrate", "timeout"), migrate["timeout"])

    limits = document.get("limits")
    if isinstance(limits, dict):
        if "shutdown_deadline" in limits:
            duration(("limits", "shutdown_deadline"), limits["shutdown_deadline"], longer_than=DEADLINE_RESERVE)
        if "start_delay" in limits:
            duration(("limits", "start_delay"), limits["start_delay"], zero_ok=True)
    power = document.get("power")
    if isinstance(power, dict):
        for key, zero_ok in (("margin", True), ("poll", False)):
            if key in power:
                duration(("power", key), power[key], zero_ok=zero_ok)
        _check_power(reporter, power, limits if isinstance(limits, dict) else {}, clean)
    defaults = document.get("defaults")
    settings(("defaults",), defaults)
    _check_migrate(reporter, ("defaults",), defaults, None, clean)
    _check_format(reporter, ("defaults",), defaults, None, clean)
    rules = document.get("guests")
    if isinstance(rules, list):
        for index, rule in enumerate(rules):
            settings(("guests", index), rule)
            _check_self_wait(reporter, ("guests", index), rule, clean)
            _check_migrate(reporter, ("guests", index), rule, defaults, clean)
            _check_format(reporter, ("guests", index), rule, defaults, clean)
    return reporter.problems


def _check_migrate(reporter: Reporter, path: KeyPath, mapping: object, defaults: object, clean) -> None:  # noqa: ANN001
    """A ``migrate`` step needs peers (in the same mapping, or in ``defaults:``), and ``come_back``
    needs ``home``: without them the step could never be carried out, and the admin would only
    learn so at the shutdown that needed it."""
    if not isinstance(mapping, dict):
        return
    own = mapping.get("migrate") if isinstance(mapping.get("migrate"), dict) else None
    inherited = defaults.get("migrate") if isinstance(defaults, dict) else None
    settings = own if own is not None else inherited if isinstance(inherited, dict) else {}
    for key in ("on_shutdown", "on_reboot"):
        chain = mapping.get(key)
        if isinstance(chain, list) and "migrate" in chain and clean((*path, key)) and not settings.get("peers"):
            reporter.at((*path, key, chain.index("migrate")),
                        "the 'migrate' step needs peers to migrate to, and none are given",
                        "add 'migrate: {peers: [qemu+tls://peer.example.org/system]}' to this mapping "
                        "or to 'defaults', or remove 'migrate' from the chain")
    if own is not None and own.get("come_back") is True and not own.get("home") and clean((*path, "migrate")):
        reporter.at((*path, "migrate", "come_back"),
                    "'come_back' needs 'home': the URI the peer's libvirt daemon sends the guest back to",
                    "add 'home: qemu+tls://<this host>/system' to this 'migrate' mapping")


_COMPRESSED = ("zstd", "lzop", "gzip", "bzip2", "xz")


def _check_format(reporter: Reporter, path: KeyPath, mapping: object, defaults: object, clean) -> None:  # noqa: ANN001
    """A compressed ``image_format`` is written in one stream: it cannot go with ``save_channels``
    above 1 (or ``auto``), set in the same mapping or, for a rule that sets only one of the two,
    under ``defaults:``. (Two rules that combine them for one guest: the plan saves it compressed
    in one stream and says so.)"""
    if not isinstance(mapping, dict) or not ({"image_format", "save_channels"} & mapping.keys()):
        return
    inherited = defaults if isinstance(defaults, dict) else {}
    image_format = mapping.get("image_format", inherited.get("image_format"))
    channels = mapping.get("save_channels", inherited.get("save_channels"))
    if image_format not in _COMPRESSED or not (channels == "auto" or (isinstance(channels, int) and channels > 1)):
        return
    key = "image_format" if "image_format" in mapping else "save_channels"
    if clean((*path, key)):
        where = "" if {"image_format", "save_channels"} <= mapping.keys() else " (the other under 'defaults')"
        reporter.at((*path, key), f"image_format {image_format} cannot go with save_channels {channels}{where}: "
                    f"a compressed image is written in one stream, channels write only the sparse format",
                    "set 'save_channels: 1' beside the compressed format, or 'image_format: sparse' "
                    "(or 'libvirt') beside the channels")


def _check_power(reporter: Reporter, power: dict, limits: dict, clean) -> None:  # noqa: ANN001
    """The UPS's port is a TCP port; ``margin`` is kept out of the deadline, so it must be shorter;
    a UPS read more often than once a second only loads upsd (its drivers poll every few)."""
    if isinstance(power.get("ups"), str) and clean(("power", "ups")):
        try:
            ups_address(power["ups"])
        except ValueError as error:
            reporter.at(("power", "ups"), f"the {error}", "leave the port out for NUT's 3493")
    margin = _seconds(power.get("margin", Power.margin))
    poll = _seconds(power.get("poll", Power.poll))
    deadline = _seconds(limits.get("shutdown_deadline", Limits.shutdown_deadline))
    if poll is not None and 0 < poll < 1 and clean(("power", "poll")):
        reporter.at(("power", "poll"), f"must be at least 1 s, not {describe(power['poll'])}")
    if (margin is not None and deadline is not None and margin >= deadline and clean(("power", "margin"))
            and clean(("limits", "shutdown_deadline"))):
        which = "" if "margin" in power else f"the default margin ({margin:g} s) "
        reporter.at(("power", "margin"),
                    f"{which}must be shorter than limits.shutdown_deadline ({deadline:g} s): the margin is kept "
                    f"out of the time the shutdown pass has, and would leave it none",
                    "set a shorter power.margin or lengthen limits.shutdown_deadline")


def _seconds(value: object) -> float | None:
    try:
        return parse_duration(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None


def duration_problem(seconds: float, *, zero_ok: bool = False, longer_than: float = 0.0) -> str | None:
    """What is wrong with a duration of ``seconds`` (the start of a sentence), or None. The code
    sleeps on these: a duration must be finite and at most MAX_DURATION; a shutdown deadline must
    be longer than the time kept back for the fallback steps (``longer_than``)."""
    if not math.isfinite(seconds):
        return "must be a finite duration"
    if seconds > MAX_DURATION:
        return f"must be at most 7 days ({MAX_DURATION:.0f} s)"
    if longer_than and seconds <= longer_than:
        return (f"must be longer than the {longer_than:g} s kept back at the end of the pass for the "
                f"fallback steps (a poweroff)")
    if seconds < 0 or (seconds == 0 and not zero_ok):
        return "must be longer than 0 seconds" if not zero_ok else "must not be negative"
    return None


def _check_self_wait(reporter: Reporter, path: KeyPath, rule: object, clean) -> None:  # noqa: ANN001
    """A rule for exactly one guest must not make it wait for itself (it would never start)."""
    if not isinstance(rule, dict) or not clean((*path, "match")) or not clean((*path, "after")):
        return
    match, after = rule.get("match"), rule.get("after")
    if not isinstance(match, dict) or not isinstance(after, list):
        return
    names = match.get("name")
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or len(names) != 1 or _GLOB_CHARS.search(names[0]):
        return
    for index, item in enumerate(after):
        if item == names[0]:
            reporter.at(
                (*path, "after", index),
                f"guest '{item}' cannot wait for itself to be up",
                "remove it from 'after'",
            )


def salvage_connections(document: object) -> tuple[str, ...] | None:
    """A broken policy's ``connections:``, when that part alone is valid; None otherwise."""
    if not isinstance(document, dict) or "connections" not in document:
        return None
    connections = document["connections"]
    if not section_is_valid("connections", connections):
        return None
    return tuple(connections)


def salvage_metrics(document: object) -> str | None:
    """A broken policy's ``metrics.textfile``, when ``metrics:`` alone is valid: a broken policy is
    just when the monitoring should hear about the pass."""
    metrics = document.get("metrics") if isinstance(document, dict) else None
    schema = policy_schema()["properties"]["metrics"]
    if not isinstance(metrics, dict) or not jsonschema.Draft202012Validator(schema).is_valid(metrics):
        return None
    return metrics.get("textfile")


def salvage_power(document: object, source: str) -> Power | None:
    """A broken policy's ``power:``, when that part alone is valid: a broken policy must not
    make the pass forget the battery it runs on and plan against the fixed deadline alone."""
    power = document.get("power") if isinstance(document, dict) else None
    if not isinstance(power, dict) or not section_is_valid("power", power):
        return None
    try:
        return power_section(power, MarkedDocument(source))
    except ValueError:  # a duration or a port the schema lets through but the model refuses
        return None
