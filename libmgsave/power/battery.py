"""The shutdown pass against the battery: the UPS read once at the start (``at_start``), then
every ``power.poll`` seconds while the pass runs (``RuntimeFollower``), the budget's end moved
down whenever the runtime left falls faster than planned. The end never moves up: a runtime
that climbs back (the load dropped) leaves the deadline as it is.

A moved end is told to the budget's listeners: the executor plans the guests not yet begun
again against what is left (``plan.replan``: the lowest priority moved first to cheaper steps),
and its one rule still holds: once only the reserve is left, every step but a guest's last
gives up.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from libmgsave import jsonout, units
from libmgsave.budget import Budget
from libmgsave.history import BatteryDecision, BatteryStep
from libmgsave.policy import Power
from libmgsave.power.deadline import BatteryDeadline, battery_deadline
from libmgsave.power.reading import UpsReading
from libmgsave.power.ups import READ_TIMEOUT, read_ups

log = logging.getLogger("mgsave")

MOVE_TOLERANCE = 1.0  # seconds: a runtime's jitter does not move the end


@dataclass(frozen=True)
class DeadlineMove:
    """The end moved down at ``at`` (epoch) on a runtime of ``runtime`` seconds."""

    at: float
    runtime: float
    seconds_left: float  # from ``at`` to the new end

    def describe(self) -> str:
        return (f"the UPS's runtime fell to {units.seconds(self.runtime)}: the shutdown deadline moved down to "
                f"{units.seconds(self.seconds_left)} from then")

    def to_dict(self) -> dict:
        return {"at": jsonout.timestamp(self.at), "runtime_seconds": self.runtime,
                "seconds_left": round(self.seconds_left, 3)}

    def decision(self) -> BatteryDecision:
        """As the record keeps it."""
        return BatteryDecision(BatteryStep.MOVED, self.at, self.runtime, round(self.seconds_left, 3), self.describe())


def at_start(power: Power, limit: float) -> BatteryDeadline:
    """The deadline of a pass whose fixed one is ``limit``, on the UPS read now (bounded by the
    client's own timeout), said in the journal."""
    reading, _failure = read_ups(power)
    deadline = battery_deadline(reading, limit=limit, margin=power.margin)
    level = logging.WARNING if deadline.warning else logging.INFO
    log.log(level, "shutdown deadline %s: %s", units.seconds(deadline.seconds), deadline.why,
            extra=_runtime_field(deadline.runtime))
    return deadline


class RuntimeFollower:
    """A thread re-reading the UPS every ``power.poll`` seconds while the block runs, lowering
    ``budget``'s end when the runtime says so; ``moves`` lists each move."""

    def __init__(self, power: Power, budget: Budget):
        self.power, self.budget = power, budget
        self.moves: list[DeadlineMove] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ups runtime", daemon=True)

    def __enter__(self) -> RuntimeFollower:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(READ_TIMEOUT + 1)  # a read under way ends by its own timeout

    def _loop(self) -> None:
        while not self._stop.wait(self.power.poll):
            try:
                self.follow(read_ups(self.power)[0])
            except Exception as error:  # noqa: BLE001 - the pass goes on with the end it has
                log.warning("following the UPS's runtime failed: %r", error, exc_info=error)

    def follow(self, reading: UpsReading) -> DeadlineMove | None:
        """Lower the end when ``reading``'s runtime leaves less than the budget has now."""
        found = battery_deadline(reading, limit=self.budget.time_left(), margin=self.power.margin)
        if found.runtime is None or found.warning:
            return None  # on line again, or unreadable: the end stays where it is
        new_end = self.budget.now() + found.seconds
        if new_end > self.budget.ends_at() - MOVE_TOLERANCE:
            return None
        move = DeadlineMove(time.time(), found.runtime, found.seconds)
        # said before the budget's listeners re-plan on it, so that the journal reads in order
        log.warning("%s", move.describe(), extra=_runtime_field(found.runtime))
        if not self.budget.lower_end(new_end, f"the UPS's runtime fell to {units.seconds(found.runtime)}",
                                     found.runtime):
            return None
        self.moves.append(move)
        return move


def _runtime_field(runtime: float | None) -> dict:
    return {} if runtime is None else {"MGSAVE_UPS_RUNTIME": f"{runtime:g}"}
