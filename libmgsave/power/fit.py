"""Whether the shutdown plan fits the UPS's runtime now, for ``mgsave plan shutdown``: the same
question the watch asks (``power.decide``: the runtime left against the plan's need plus the
margin), asked of the runtime alone, on line or not."""

from __future__ import annotations

from dataclasses import dataclass

from libmgsave import untrusted, units
from libmgsave.plan.model import Plan
from libmgsave.policy import Power
from libmgsave.power.need import needed_seconds
from libmgsave.power.reading import UpsReading
from libmgsave.power.ups import read_ups


@dataclass(frozen=True)
class PlanFit:
    """Whether the shutdown plan fits the runtime the UPS reports."""
    reading: UpsReading
    needed: float  # seconds the shutdown plan needs
    margin: float

    @property
    def fits(self) -> bool | None:
        """True when the runtime is more than the need plus the margin; None when it is unknown."""
        runtime = self.reading.runtime.value
        if self.reading.error or runtime is None:
            return None
        return runtime > self.needed + self.margin

    def describe(self) -> str:
        """One line: ``UPS ups1@localhost (on battery): runtime 20 min 00 s, the plan needs 11 s
        plus the 1 min 00 s margin: it fits``."""
        head = f"UPS {untrusted.safe(self.reading.ups)} ({self.reading.state.words})"
        need = f"the plan needs {units.seconds(self.needed)} plus the {units.seconds(self.margin)} margin"
        if self.reading.error:
            return f"{head}: cannot be read ({untrusted.message(self.reading.error)}); {need}"
        if self.fits is None:
            return f"{head}: runtime unknown ({self.reading.runtime.unknown}); {need}: whether it fits is not known"
        verdict = ("it fits" if self.fits else
                   "it does not fit (on battery the watch would start the host's shutdown now)")
        return f"{head}: runtime {units.seconds(self.reading.runtime.value)}, {need}: {verdict}"

    def to_dict(self) -> dict:
        return {"ups": self.reading.ups, "state": str(self.reading.state), "error": self.reading.error,
                "runtime_seconds": self.reading.runtime.value, "runtime_unknown": self.reading.runtime.unknown,
                "needed_seconds": self.needed, "margin_seconds": self.margin, "fits": self.fits}


def plan_fit(power: Power, plan: Plan) -> PlanFit:
    """The UPS read now, against ``plan``'s need."""
    return PlanFit(read_ups(power)[0], needed_seconds(plan), power.margin)
