"""The shutdown pass's deadline against the battery: pure, no network.

On battery, the pass must be over before the UPS's runtime is, less the margin kept in hand and
less the host's own last flush (``FINAL_FLUSH``: what the kernel still writes at poweroff; each
guest's image is flushed inside its save, whose learned rate counts it). The deadline is never
longer than ``limits.shutdown_deadline`` and never shorter than the reserve the budget keeps for
every guest's last step: with less, every guest gets only that step (the cheapest chain).
A UPS that cannot be read, or whose runtime cannot be right, leaves the fixed deadline, said
with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from libmgsave import units, untrusted
from libmgsave.budget import DEADLINE_RESERVE
from libmgsave.history import BatteryDecision, BatteryStep
from libmgsave.power.reading import PowerState, UpsReading

FINAL_FLUSH = 5.0  # seconds: a bound on the host's own writes at poweroff, after the pass


@dataclass(frozen=True)
class BatteryDeadline:
    """The pass's deadline in seconds from the reading, and why."""

    seconds: float
    why: str
    runtime: float | None = None  # the runtime it was planned against, when it was
    warning: str | None = None  # the UPS could not be read or lied: the fixed deadline, said so

    def to_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "why": self.why, "runtime_seconds": self.runtime,
                "warning": self.warning}

    def decision(self, at: float) -> BatteryDecision:
        """As the record keeps it: the deadline set at ``at`` (epoch, the pass's start)."""
        return BatteryDecision(BatteryStep.DEADLINE, at, self.runtime, round(self.seconds, 3), self.why)


def battery_deadline(reading: UpsReading, *, limit: float, margin: float,
                     flush: float = FINAL_FLUSH) -> BatteryDeadline:
    """The deadline for a pass whose fixed one is ``limit`` seconds, on ``reading``."""
    fixed = f"the fixed deadline of {units.seconds(limit)}"
    ups = f"the UPS {untrusted.safe(reading.ups)}"
    if reading.error:
        return _unusable(limit, f"{ups} cannot be read ({untrusted.message(reading.error)})", fixed)
    state = reading.state
    if state is PowerState.ONLINE:
        return BatteryDeadline(limit, f"{ups} is on line: {fixed}")
    if state is PowerState.UNKNOWN:
        return _unusable(limit, f"{ups} says neither on line nor on battery "
                                f"({untrusted.safe(' '.join(reading.flags)) or 'no status'!r})", fixed)
    runtime = reading.runtime.value
    if runtime is None:
        return _unusable(limit, f"{ups} is {state.words}, but {reading.runtime.unknown}", fixed)
    left = runtime - margin - flush
    kept = (f"runtime {units.seconds(runtime)} less the {units.seconds(margin)} margin and "
            f"{units.seconds(flush)} for the final flush")
    if left >= limit:
        return BatteryDeadline(limit, f"{ups} is {state.words}: {kept} leaves more than {fixed}", runtime)
    if left < DEADLINE_RESERVE:
        return BatteryDeadline(min(limit, DEADLINE_RESERVE),
                               f"{ups} is {state.words}: {kept} leaves less than the "
                               f"{units.seconds(DEADLINE_RESERVE)} kept for every guest's last step: each guest "
                               f"gets only that step (its chain's cheapest)", runtime)
    return BatteryDeadline(left, f"{ups} is {state.words}: the deadline is {units.seconds(left)}: {kept}", runtime)


def _unusable(limit: float, what: str, fixed: str) -> BatteryDeadline:
    warning = f"{what}: the shutdown pass plans against {fixed}"
    return BatteryDeadline(limit, warning, warning=warning)
