"""The last passes as timelines: from a record, per guest, every phase with its start and end.

Pure: a record (as ``state`` reads it) in, a ``PassTimeline`` out. A phase is a step (save,
shutdown, resume...) or a wait (for the guests it is after, for a slot, for its readiness).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from libmgsave import jsonout
from libmgsave.history import BatteryDecision, EntryError, battery_decisions

WAIT_KINDS = ("order", "after", "slot", "ready")
# What each phase kind means, in the order both drawings list them ("failed": a failed step).
LEGEND = (("order", "waiting for an earlier order group"), ("after", "waiting for the guests it is after"),
          ("slot", "waiting for a slot"),
          ("save", "save"), ("save-to-file", "save to file"), ("shutdown", "shutdown"),
          ("poweroff", "poweroff"), ("resume", "resume"), ("restore", "restore"), ("start", "start"),
          ("migrate", "migrate to a peer"), ("return", "migrate home"), ("ready", "readiness check"),
          ("failed", "failed step"))
# Steps that hold a slot (limits.max_parallel_saves, max_parallel_starts): their peak
# concurrency says whether the parallelism is right.
SLOT_STEPS = {"shutdown": ("save", "save-to-file"), "boot": ("resume", "restore", "start")}
# A carried-over entry (an earlier pass of this host cycle) ran before this record began.
_CARRIED_OVER_SLACK = 1.0


@dataclass(frozen=True)
class Phase:
    """One span of a guest's row: a step or a wait."""
    kind: str  # a step's action, or one of WAIT_KINDS
    started: float
    finished: float
    ok: bool = True
    error: str | None = None

    @property
    def is_wait(self) -> bool:
        return self.kind in WAIT_KINDS

    @property
    def seconds(self) -> float:
        return self.finished - self.started


@dataclass(frozen=True)
class Row:
    """One guest's row of the timeline."""
    name: str
    connection: str
    outcome: str
    phases: tuple[Phase, ...]


@dataclass(frozen=True)
class PassTimeline:
    """A whole pass, as the timeline draws it."""
    kind: str  # "shutdown" or "boot"
    started: float
    finished: float
    rows: tuple[Row, ...]
    interrupted: str | None = None
    idle: int = 0  # guests the pass had nothing to do with (skipped): counted, not drawn
    battery: tuple[BatteryDecision, ...] = ()  # a shutdown pass on a UPS: its decisions on the runtime

    @property
    def guests(self) -> int:
        """Every guest of the pass, as its summary counts them."""
        return len(self.rows) + self.idle

    @property
    def seconds(self) -> float:
        return max(0.0, self.finished - self.started)

    @property
    def peak_in_slots(self) -> int:
        """The most slot-holding steps (saves at shutdown, starts at boot) that ran at once."""
        kinds = SLOT_STEPS.get(self.kind, ())
        edges = sorted((t, delta) for row in self.rows for p in row.phases if p.kind in kinds
                       for t, delta in ((p.started, 1), (p.finished, -1)))
        peak = running = 0
        for _time, delta in edges:
            running += delta
            peak = max(peak, running)
        return peak

    def to_dict(self) -> dict:
        return {
            "pass": self.kind, "started": jsonout.timestamp(self.started),
            "finished": jsonout.timestamp(self.finished), "duration_seconds": round(self.seconds, 3),
            "interrupted": self.interrupted, "peak_in_slots": self.peak_in_slots, "idle_guests": self.idle,
            "guests": [{"name": r.name, "connection": r.connection, "outcome": r.outcome,
                        "phases": [{"kind": p.kind, "started": jsonout.timestamp(p.started),
                                    "finished": jsonout.timestamp(p.finished), "ok": p.ok, "error": p.error}
                                   for p in r.phases]} for r in self.rows],
            "battery": [{**d.to_dict(), "at": jsonout.timestamp(d.at)} for d in self.battery],
        }


def _number(value) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _phases(entry: dict, since: float) -> tuple[Phase, ...]:
    """The guest's waits and steps from its record entry, in time order; anything malformed
    or from before ``since`` (an earlier pass's entry carried over) is left out."""
    phases = []
    for item, kind_key in [(w, "kind") for w in entry.get("waits") or ()] + \
                          [(s, "action") for s in entry.get("steps") or ()]:
        if not isinstance(item, dict):
            continue
        started, finished = _number(item.get("started")), _number(item.get("finished"))
        kind = item.get(kind_key)
        if started is None or finished is None or not isinstance(kind, str) or started < since:
            continue
        error = item.get("error") if isinstance(item.get("error"), str) else None
        phases.append(Phase(kind, started, max(started, finished), item.get("ok", True) is not False, error))
    return tuple(sorted(phases, key=lambda p: (p.started, not p.is_wait)))


def from_record(record: dict | None, kind: str) -> PassTimeline | None:
    """The timeline of the pass that wrote ``record`` (a record ``state`` read and trusts), or
    None without one. Guests the pass did nothing with (skipped, and no phase) are left out."""
    if not record:
        return None
    started = float(record["started"])
    rows = []
    idle = 0
    for entry in record["guests"].values():
        phases = _phases(entry, started - _CARRIED_OVER_SLACK)
        if not phases and entry.get("outcome") == "skipped":
            idle += 1
            continue
        if not phases and entry.get("steps"):  # carried over from an earlier pass: not this one's
            continue
        if entry.get("recorded_by"):  # added by evacuate or return: not this pass's
            continue
        rows.append(Row(entry["name"], entry["connection"], entry["outcome"], phases))
    rows.sort(key=lambda r: (r.phases[0].started if r.phases else math.inf, r.name))
    ends = [p.finished for r in rows for p in r.phases]
    finished = _number(record.get("finished")) or max(ends, default=started)
    return PassTimeline(kind, started, max([finished, *ends]), tuple(rows), record.get("interrupted"), idle,
                        _battery(record))


def _battery(record: dict) -> tuple[BatteryDecision, ...]:
    """The record's decisions on the battery (checked when it was read; a malformed one: none)."""
    try:
        return battery_decisions(record.get("battery"))
    except EntryError:
        return ()
