"""What happened, as the bottom floor sees it: the closed sets a pass speaks in, and the typed
entries of its records.

The plan reads the last records as these values, the state directory reads and writes them,
the executor and the report speak of actions and outcomes in them. Everything above imports
this package; it imports nothing of mgsave outside itself, so no layer needs another to name
what happened. The closed sets are in ``kinds``; this module holds the record's typed entries.

A record entry reads its own JSON (``GuestEntry.from_dict``: every field checked, a clear
problem otherwise: a record is data from disk) and writes it back as it was read
(``to_dict``): the fields it had, and only those, so records written before keep their bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The closed sets, named here too: every layer imports them from ``libmgsave.history``.
from libmgsave.history.kinds import (Action, Outcome, PassKind, RecordedBy, Severity,  # noqa: F401
                                     ShutdownKind, WaitKind)




@dataclass(frozen=True)
class HostShutdown:
    """The kind of shutdown a pass ran for, and what showed it (or why it is not known)."""

    kind: ShutdownKind
    why: str

    @property
    def chain(self) -> str:
        """The setting whose chain each guest gets: ``on_reboot`` or ``on_shutdown``."""
        return "on_reboot" if self.kind.comes_back else "on_shutdown"

    def to_dict(self) -> dict:
        return {"kind": self.kind.value, "why": self.why}

    @classmethod
    def from_dict(cls, raw) -> HostShutdown:
        """A record's ``host_shutdown``; raises EntryError naming what is wrong."""
        if not isinstance(raw, Mapping) or set(raw) != {"kind", "why"}:
            raise EntryError(f"'host_shutdown' is {raw!r}, not a kind of shutdown and why")
        if raw["kind"] not in frozenset(ShutdownKind) or not isinstance(raw["why"], str):
            raise EntryError(f"'host_shutdown' is {dict(raw)!r}: its kind is not one of "
                             f"{', '.join(ShutdownKind)}, or its why not a string")
        return cls(ShutdownKind(raw["kind"]), raw["why"])


class BatteryStep(enum.StrEnum):
    """A decision a shutdown pass took on a UPS's runtime (a record's ``battery``)."""

    DEADLINE = "deadline"  # the pass's deadline, set at its start
    MOVED = "moved"  # the runtime fell faster than planned: the deadline moved down
    REPLANNED = "replanned"  # the guests not yet begun were planned again (some moved to cheaper steps)


@dataclass(frozen=True)
class BatteryDecision:
    """One decision on the battery: when (epoch), on which runtime (None: the UPS said none),
    how many seconds it left the pass, why, and (a re-plan) the guests moved to cheaper steps."""

    step: BatteryStep
    at: float
    runtime: float | None
    seconds_left: float
    why: str
    moved: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"step": self.step.value, "at": self.at, "runtime_seconds": self.runtime,
                "seconds_left": self.seconds_left, "why": self.why, "moved": list(self.moved)}

    @classmethod
    def from_dict(cls, raw) -> BatteryDecision:
        """One of a record's ``battery`` decisions; raises EntryError naming what is wrong."""
        if not isinstance(raw, Mapping) or set(raw) != {"step", "at", "runtime_seconds", "seconds_left", "why", "moved"}:
            raise EntryError(f"'battery' holds {raw!r}, not a decision on the battery")
        runtime = raw["runtime_seconds"]
        if (raw["step"] not in frozenset(BatteryStep) or not is_number(raw["at"]) or not is_number(raw["seconds_left"])
                or not (runtime is None or is_number(runtime)) or not isinstance(raw["why"], str)
                or not _is_strings(raw["moved"])):
            raise EntryError(f"'battery' holds {dict(raw)!r}: its step is not one of {', '.join(BatteryStep)}, "
                             f"or a time, a number of seconds, its why or the guests moved is not what it should be")
        return cls(BatteryStep(raw["step"]), raw["at"], runtime, raw["seconds_left"], raw["why"], tuple(raw["moved"]))


def battery_decisions(raw) -> tuple[BatteryDecision, ...]:
    """A record's ``battery`` (None, in a record of a pass without a UPS or written before it:
    none); raises EntryError naming what is wrong."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise EntryError(f"'battery' is {raw!r}, not a list of decisions on the battery")
    return tuple(BatteryDecision.from_dict(decision) for decision in raw)


# Aggregate save throughput assumed before any pass has measured one on this host. Saving is
# CPU-bound (QEMU and libvirt's I/O helper); 200 MB/s is below what a 2-core host reached.
DEFAULT_SAVE_THROUGHPUT = 200e6


@dataclass(frozen=True)
class SaveRate:
    """The aggregate save rate assumed on one connection (guest memory bytes per second), and
    where it came from (a past pass's measure, or the default), for ``mgsave plan``."""

    bytes_per_second: float
    source: str

    def to_dict(self) -> dict:
        return {"bytes_per_second": self.bytes_per_second, "source": self.source}


def guest_record_key(connection: str, uuid: str) -> str:
    """The key a guest's entry is filed under in a record."""
    return f"{connection} {uuid.lower()}"


UUID_PATTERN = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _step_problem(step) -> str | None:
    if not isinstance(step, dict) or not isinstance(step.get("action"), str) or not isinstance(step.get("ok"), bool):
        return "not a step"
    for name in ("started", "finished"):
        if step.get(name) is not None and not is_number(step[name]):
            return "not a step"
    if step.get("error") is not None and not isinstance(step["error"], str):
        return "not a step"
    return None


def _wait_problem(wait) -> str | None:
    if not isinstance(wait, dict) or not isinstance(wait.get("kind", ""), str):
        return "not a wait"
    if any(wait.get(name) is not None and not is_number(wait[name]) for name in ("started", "finished")):
        return "not a wait"
    return None


class EntryError(ValueError):
    """A record entry that cannot be trusted: the message says which field and why."""


_NEEDS_TEXT = ("machine", "cpu_mode", "cpu_model")


@dataclass(frozen=True)
class ResumeNeeds:
    """What resuming a saved image needs of the hypervisor, as libvirt said at the save: the
    QEMU and libvirt versions that wrote it (libvirt's numbers: major * 1,000,000 + minor *
    1,000 + release), the guest's machine type and CPU, and the device models whose loss from
    a later QEMU breaks loading the state (``domainxml.resume_needs`` says which)."""

    qemu_version: int | None
    libvirt_version: int | None
    machine: str | None
    cpu_mode: str | None
    cpu_model: str | None
    devices: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"qemu_version": self.qemu_version, "libvirt_version": self.libvirt_version,
                "machine": self.machine, "cpu_mode": self.cpu_mode, "cpu_model": self.cpu_model,
                "devices": list(self.devices)}

    @classmethod
    def from_dict(cls, raw) -> ResumeNeeds:
        """A record's ``needs``; raises EntryError naming what is wrong."""
        if not isinstance(raw, Mapping) or set(raw) != {"qemu_version", "libvirt_version", *_NEEDS_TEXT, "devices"}:
            raise EntryError(f"'needs' is {raw!r}, not what resuming an image needs")
        for name in ("qemu_version", "libvirt_version"):
            if raw[name] is not None and not _is_count(raw[name]):
                raise EntryError(f"'needs.{name}' is {raw[name]!r}, not a version number")
        for name in _NEEDS_TEXT:
            if raw[name] is not None and not isinstance(raw[name], str):
                raise EntryError(f"'needs.{name}' is {raw[name]!r}, not a string")
        if not _is_strings(raw["devices"]):
            raise EntryError(f"'needs.devices' is {raw['devices']!r}, not a list of device models")
        return cls(raw["qemu_version"], raw["libvirt_version"], raw["machine"], raw["cpu_mode"], raw["cpu_model"],
                   tuple(raw["devices"]))


_REQUIRED = ("connection", "name", "uuid", "outcome")
# The closed sets an entry's words are checked against, made once: a record of 10,000 guests is
# validated entry by entry each time it is read.
_OUTCOMES = frozenset(Outcome)
_RECORDED_BY = frozenset(RecordedBy)

# Each optional field of an entry: what it must be, and how to say it.
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
    "recorded_by": (lambda v: v is None or (isinstance(v, str) and v in _RECORDED_BY), "a pass that adds entries (evacuate, return)"),
    "recorded": (lambda v: v is None or is_number(v), "a time"),
}
# Fields with their own type, which reads itself (and raises EntryError naming what is wrong).
_ENTRY_TYPES = {"needs": ResumeNeeds}


@dataclass(frozen=True)
class GuestEntry:
    """One guest in a record, filed under ``guest_record_key``. Both records have the first four
    and what was done (``steps``, ``waits``, times: ``mgsave report`` draws them); the shutdown
    record also has the guest's facts, the boot record ``ok``. An entry another kind of pass
    wrote into the shutdown record says which (``recorded_by``) and when (``recorded``).

    Made with ``of`` (or read with ``from_dict``): ``given`` holds the optional fields the
    entry has, a None among them included, so that ``to_dict`` writes exactly those."""

    connection: str
    name: str
    uuid: str
    outcome: Outcome
    persistent: bool | None = None
    state: str | None = None
    memory_kib: int | None = None
    title: str | None = None
    metadata: Mapping[str, str] | None = None
    image: str | None = None  # a transient guest's save file
    image_used: bool | None = None  # boot: its save file was restored (stale from then on)
    peer: str | None = None  # migrated: the libvirt URI of the peer it runs on now
    planned: tuple[str, ...] | None = None  # the actions of its plan
    steps: tuple[Mapping, ...] | None = None  # each step's action, ok, started, finished, bytes, error
    waits: tuple[Mapping, ...] | None = None  # what it waited for besides its steps (WaitKind), started, finished
    started: float | None = None  # when the pass took it up
    finished: float | None = None
    bytes: int | None = None
    messages: tuple[str, ...] | None = None
    note: str | None = None
    ok: bool | None = None
    recorded_by: RecordedBy | None = None
    recorded: float | None = None  # when that pass began
    needs: ResumeNeeds | None = None  # saved: what resuming its image needs (None: saved before mgsave said)
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    # fields of a record this mgsave does not know: kept as they were when the entry is written again
    unknown: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, **fields) -> GuestEntry:
        """An entry with exactly these fields (a None written as null)."""
        return cls(**_typed(fields), given=frozenset(fields) - set(_REQUIRED))

    def replace(self, **changes) -> GuestEntry:
        """This entry with ``changes``, each of them written from now on."""
        return dataclasses.replace(self, **_typed(changes), given=self.given | (frozenset(changes) - set(_REQUIRED)))

    @property
    def key(self) -> str:
        return guest_record_key(self.connection, self.uuid)

    @property
    def migrated_to(self) -> str | None:
        """The peer the entry places its guest on (a shutdown pass migrated it there), or None."""
        return self.peer if self.outcome is Outcome.MIGRATED and self.peer else None

    @classmethod
    def from_dict(cls, raw, key: str | None = None) -> GuestEntry:
        """The entry a record holds (under ``key``, when given: it must be this guest's).
        Raises EntryError naming the field when anything in it is not what mgsave writes."""
        if not isinstance(raw, dict) or not set(_REQUIRED) <= raw.keys():
            raise EntryError(f"entry {key!r} is incomplete")
        for name in _REQUIRED:
            if not isinstance(raw[name], str):
                raise EntryError(f"'{name}' is {raw[name]!r}, not a string")
        if not UUID_PATTERN.match(raw["uuid"]):
            raise EntryError(f"'uuid' is {raw['uuid']!r}, not a UUID")
        if raw["outcome"] not in _OUTCOMES:
            raise EntryError(f"'outcome' is {raw['outcome']!r}, not an outcome mgsave knows")
        if key is not None and key != guest_record_key(raw["connection"], raw["uuid"]):
            raise EntryError(f"entry {key!r} is filed under the wrong key (it describes {raw['name']!r})")
        for name, (valid, what) in _ENTRY_FIELDS.items():
            if name in raw and not valid(raw[name]):
                raise EntryError(f"'{name}' is {raw[name]!r}, not {what}")
        known = {name: raw[name] for name in (*_REQUIRED, *_ENTRY_FIELDS, *_ENTRY_TYPES) if name in raw}
        unknown = {name: value for name, value in raw.items() if name not in known}
        # Made at once, not made and then replaced: dataclasses.replace reads every field again.
        return cls(**_typed(known), given=frozenset(known) - set(_REQUIRED), unknown=unknown)

    def to_dict(self) -> dict:
        """The entry as the record keeps it: its fields as read or given, and only those."""
        written = {name: _json(getattr(self, name)) for name in (*_REQUIRED, *sorted(self.given))}
        return {**self.unknown, **written}


def _typed(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Record fields as the entry holds them: enums for closed sets, tuples for lists."""
    typed = dict(fields)
    if "outcome" in typed:
        typed["outcome"] = Outcome(typed["outcome"])
    if typed.get("recorded_by") is not None:
        typed["recorded_by"] = RecordedBy(typed["recorded_by"])
    for name in ("planned", "steps", "waits", "messages"):
        if typed.get(name) is not None:
            typed[name] = tuple(typed[name])
    if typed.get("metadata") is not None:
        typed["metadata"] = dict(typed["metadata"])
    for name, kind in _ENTRY_TYPES.items():
        if typed.get(name) is not None and not isinstance(typed[name], kind):
            typed[name] = kind.from_dict(typed[name])
    return typed


def _json(value):
    if isinstance(value, ResumeNeeds):
        return value.to_dict()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class RecordedPass:
    """A record read back, as the plan sees it: its guests' entries by key (and, when the record
    says, its kind and when its pass began)."""

    guests: Mapping[str, GuestEntry]
    kind: str | None = None
    started: float | None = None
    host_shutdown: HostShutdown | None = None  # a shutdown record's; None in records written before it
    battery: tuple[BatteryDecision, ...] = ()  # a shutdown record's on a UPS; none in records written before it

    @classmethod
    def from_dict(cls, data: Mapping) -> RecordedPass:
        """A record (its file already checked by ``state.records.read_record``): each entry read
        with ``GuestEntry.from_dict``, which raises EntryError."""
        guests = {key: entry if isinstance(entry, GuestEntry) else GuestEntry.from_dict(entry, key)
                  for key, entry in data["guests"].items()}
        shutdown = data.get("host_shutdown")
        return cls(guests, data.get("kind"), data.get("started"),
                   None if shutdown is None else HostShutdown.from_dict(shutdown), battery_decisions(data.get("battery")))
