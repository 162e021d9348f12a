"""Pure: whether the host must start going down now, from one reading of the UPS and the time
the shutdown plan needs (``mgsave power watch`` only asks; the loop around it decides nothing).

The UPS's own flags come first: low battery (LB) or a forced shutdown (FSD) mean now, whatever
the runtime says. On battery, the host goes down once the runtime left is no more than the
plan's need plus the margin. A reading that cannot be trusted (no reading, no known state, no
runtime) is never a reason to go down on its own: upsmon stays the authority for the final
forced shutdown, and it acts on the UPS's flags, not on mgsave's reading.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from libmgsave import units, untrusted
from libmgsave.power.reading import PowerState, UpsReading


class Verdict(enum.StrEnum):
    STANDBY = "standby"  # nothing to do now: on line, or on battery with runtime to spare
    SHUT_DOWN_NOW = "shut-down-now"  # start the host's shutdown
    UNKNOWN = "unknown"  # the reading says nothing to go by: keep watching, do nothing


@dataclass(frozen=True)
class Decision:
    """What the watch does after one reading of the UPS, and why."""
    verdict: Verdict
    why: str
    state: PowerState
    runtime: float | None  # seconds, as the UPS says; None: unknown
    needed: float | None  # seconds the shutdown plan needs; None: not asked (not on battery)
    margin: float


def decide(reading: UpsReading, needed: float | None, margin: float) -> Decision:
    """What to do on ``reading``, the plan needing ``needed`` seconds (None when not known: it
    is asked only on battery) and ``margin`` seconds kept in hand."""
    state, runtime = reading.state, reading.runtime.value

    def verdict(kind: Verdict, why: str) -> Decision:
        return Decision(kind, why, state, runtime, needed, margin)

    if reading.error:
        return verdict(Verdict.UNKNOWN, f"the UPS cannot be read: {untrusted.message(reading.error)}")
    if state is PowerState.FORCED_SHUTDOWN:
        return verdict(Verdict.SHUT_DOWN_NOW, "the UPS is in forced shutdown (FSD)")
    if state is PowerState.LOW_BATTERY:
        return verdict(Verdict.SHUT_DOWN_NOW, "the UPS is on battery and says its battery is low (LB)")
    if state is PowerState.ONLINE:
        return verdict(Verdict.STANDBY, "the UPS is on line")
    if state is PowerState.UNKNOWN:
        flags = untrusted.safe(" ".join(reading.flags)) or "empty"
        return verdict(Verdict.UNKNOWN, f"the UPS's state is unknown (status {flags!r})")
    if runtime is None:
        return verdict(Verdict.UNKNOWN, f"on battery, runtime unknown: {reading.runtime.unknown}")
    if needed is None:
        return verdict(Verdict.UNKNOWN, "on battery, and the time the shutdown plan needs is not known")
    short = runtime <= needed + margin
    comparison = "no more than" if short else "more than"
    why = (f"on battery, runtime {units.seconds(runtime)} left: {comparison} the {units.seconds(needed)} the "
           f"shutdown plan needs plus the {units.seconds(margin)} margin")
    return verdict(Verdict.SHUT_DOWN_NOW if short else Verdict.STANDBY, why)
