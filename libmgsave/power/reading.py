"""What a UPS said, checked: pure, no network.

upsd passes on whatever the UPS's driver reports, and a UPS's own estimate can be missing,
negative, or absurd (a firmware's 65535, a driver's overflow). A value that cannot be right is
kept out (``Measure.value`` None) with the reason, so that nothing plans against it.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

from libmgsave import jsonout, units, untrusted
from libmgsave.policy import MAX_DURATION

# NUT's numbers: decimal with a dot, no exponent, no thousands separator (docs/net-protocol.txt).
_NUMBER = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,9})?")
MAX_RUNTIME = MAX_DURATION  # 7 days: more is no battery's
MAX_LOAD = 1000.0  # percent of the UPS's rating; an overload reads above 100


class PowerState(enum.StrEnum):
    """What ``ups.status`` says of the power, the gravest first."""

    FORCED_SHUTDOWN = "forced-shutdown"  # FSD: upsmon is shutting the systems down; as grave as OB LB
    LOW_BATTERY = "low-battery"  # OB LB: the UPS's own threshold is reached
    ON_BATTERY = "on-battery"  # OB
    ONLINE = "online"  # OL
    UNKNOWN = "unknown"  # neither, both, or no status at all

    @property
    def words(self) -> str:
        return {"forced-shutdown": "forced shutdown (FSD)", "low-battery": "on battery, battery low",
                "on-battery": "on battery", "online": "on line", "unknown": "state unknown"}[self.value]


@dataclass(frozen=True)
class Measure:
    """One of the UPS's numbers: the value, or None and why it is not known."""

    value: float | None
    unknown: str | None = None  # why, when value is None

    def to_dict(self) -> dict:
        return {"value": self.value, "unknown": self.unknown}


def measure(raw: str | None, what: str, *, low: float, high: float) -> Measure:
    """``raw`` (upsd's text, None when the UPS does not report it) as a number from ``low`` to
    ``high``, or unknown with the reason."""
    if raw is None:
        return Measure(None, f"the UPS does not report its {what}")
    shown = untrusted.safe(raw, limit=40)
    if not _NUMBER.fullmatch(raw.strip()):
        return Measure(None, f"its {what} is not a number: {shown!r}")
    value = float(raw)
    if not math.isfinite(value) or value < low:
        return Measure(None, f"its {what} is {'negative' if value < 0 else 'too low'}: {shown}")
    if value > high:
        return Measure(None, f"its {what} is absurd: {shown} (more than {high:g})")
    return Measure(value)


def power_state(flags: tuple[str, ...]) -> PowerState:
    """The state NUT's status flags stand for. FSD counts as OB LB (NUT's own rule)."""
    if "FSD" in flags:
        return PowerState.FORCED_SHUTDOWN
    on_line, on_battery = "OL" in flags, "OB" in flags
    if on_line == on_battery:  # neither (WAIT, OFF...) or both: nothing to go by
        return PowerState.UNKNOWN
    if on_battery:
        return PowerState.LOW_BATTERY if "LB" in flags else PowerState.ON_BATTERY
    return PowerState.ONLINE


@dataclass(frozen=True)
class UpsReading:
    """One reading of the UPS, or why there is none (``error``)."""

    ups: str  # name@host[:port]
    read_at: float  # epoch
    error: str | None = None  # it could not be read at all
    flags: tuple[str, ...] = ()  # ups.status's words, as upsd sent them (a few, each short)
    runtime: Measure = Measure(None, "not read")  # seconds
    charge: Measure = Measure(None, "not read")  # percent
    load: Measure = Measure(None, "not read")  # percent of the rating

    @classmethod
    def from_values(cls, ups: str, read_at: float, values: dict[str, str | None]) -> UpsReading:
        """From upsd's texts of ``ups.status``, ``battery.runtime``, ``battery.charge``, ``ups.load``."""
        status = values.get("ups.status") or ""
        flags = tuple(word[:32] for word in status.split()[:16])
        return cls(ups, read_at, None, flags,
                   runtime=measure(values.get("battery.runtime"), "runtime", low=0, high=MAX_RUNTIME),
                   charge=measure(values.get("battery.charge"), "charge", low=0, high=100),
                   load=measure(values.get("ups.load"), "load", low=0, high=MAX_LOAD))

    @property
    def state(self) -> PowerState:
        return PowerState.UNKNOWN if self.error else power_state(self.flags)

    def describe(self) -> str:
        """One line for ``mgsave status``: ``UPS ups1@localhost: on battery, runtime 5 min 00 s,
        charge 42%, load 23%``, or why it cannot be read or a value is not known."""
        head = f"UPS {untrusted.safe(self.ups)}"
        if self.error:
            return f"{head}: cannot be read: {untrusted.message(self.error)}"
        state = self.state.words
        if self.state is PowerState.UNKNOWN:
            state += f" (status {untrusted.safe(' '.join(self.flags)) or 'empty'!r})"
        elif self.state is PowerState.ONLINE and "LB" in self.flags:
            state += ", battery low"
        parts = [state, _part("runtime", self.runtime, units.seconds),
                 _part("charge", self.charge, _percent), _part("load", self.load, _percent)]
        return f"{head}: " + ", ".join(parts)

    def to_dict(self) -> dict:
        return {"ups": self.ups, "read_at": jsonout.timestamp(self.read_at), "error": self.error,
                "state": str(self.state), "flags": list(self.flags), "runtime_seconds": self.runtime.to_dict(),
                "charge_percent": self.charge.to_dict(), "load_percent": self.load.to_dict()}


def _part(name: str, value: Measure, text) -> str:  # noqa: ANN001
    if value.value is None:
        return f"{name} unknown ({value.unknown})"
    return f"{name} {text(value.value)}"


def _percent(value: float) -> str:
    return f"{value:g}%"
