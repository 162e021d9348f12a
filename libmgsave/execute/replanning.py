"""The chains of a shutdown plan's guests while it is carried out, planned again when the
deadline moves down (a UPS's runtime falling faster than planned).

A guest's work has begun once one of its steps does (a save once it has its slot, a shutdown
once asked); until then its chain may change. When the budget's end moves down, ``Replanner``
asks ``plan.replan`` about the guests not yet begun, applies its answer (a guest moved off its
save is withdrawn from the save slots' queue at once, so that it is shut down now rather than
after the saves it waited for) and keeps each round for the summary, ``--json`` and the record.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from libmgsave import jsonout, units
from libmgsave.budget import Budget
from libmgsave.execute.scheduler import Slots
from libmgsave.history import BatteryDecision, BatteryStep
from libmgsave.plan import Action, GuestKey, GuestPlan, Plan
from libmgsave.plan.replan import SAVES, NotBegun, Replanned, replan

log = logging.getLogger("mgsave")


@dataclass(frozen=True)
class ReplanRound:
    """One re-plan: when (epoch), on what runtime (None: not known), with how long left, and
    the guests it moved (none: every save not yet begun still fits)."""

    at: float
    cause: str
    runtime: float | None
    seconds_left: float
    moved: tuple[Replanned, ...]

    def describe(self) -> str:
        head = (f"re-planned the guests not yet begun ({self.cause}, {units.seconds(self.seconds_left)} left)")
        if not self.moved:
            return f"{head}: every save not yet begun still fits"
        names = ", ".join(f"{m.name} to {m.actions[0]}" for m in self.moved)
        return f"{head}: moved to cheaper steps, lowest priority first: {names}"

    def decision(self) -> BatteryDecision:
        """As the record keeps it: the guests moved by name."""
        return BatteryDecision(BatteryStep.REPLANNED, self.at, self.runtime, round(self.seconds_left, 3),
                               self.describe(), tuple(m.name for m in self.moved))

    def to_dict(self) -> dict:
        return {"at": jsonout.timestamp(self.at), "cause": self.cause, "runtime_seconds": self.runtime,
                "seconds_left": round(self.seconds_left, 3), "moved": [m.to_dict() for m in self.moved]}


class Replanner:
    """The chains of ``plan``'s active guests, changed for those not yet begun on each move of
    ``budget``'s end (``listen``)."""

    def __init__(self, plan: Plan, budget: Budget, save_slots: Slots):
        self.plan, self.budget, self.save_slots = plan, budget, save_slots
        self.rounds: list[ReplanRound] = []
        self._lock = threading.Lock()
        self._entries = {e.key: e for e in plan.active}
        self._chains: dict[GuestKey, tuple[Action, ...]] = {e.key: e.actions for e in plan.active}
        self._moved: dict[GuestKey, Replanned] = {}
        self._begun: set[GuestKey] = set()
        self._saving: set[GuestKey] = set()  # saves begun and not over

    def listen(self):  # noqa: ANN201 - a context manager
        """While the block runs, every move down of the budget's end re-plans."""
        return self.budget.listening(self.moved_down)

    def begin(self, entry: GuestPlan, action: Action) -> Replanned | None:
        """``entry``'s ``action`` begins, unless a re-plan dropped it: then why (and the guest
        goes on with its next step)."""
        with self._lock:
            if action not in self._chains[entry.key]:
                return self._moved[entry.key]
            self._begun.add(entry.key)
            if action in SAVES:
                self._saving.add(entry.key)
            return None

    def passed(self, entry: GuestPlan, action: Action) -> None:
        """``action`` is over for ``entry`` (done, failed, or skipped for time): a re-plan no
        longer counts it."""
        with self._lock:
            chain = self._chains[entry.key]
            if action in chain:
                self._chains[entry.key] = chain[chain.index(action) + 1:] or chain
            self._saving.discard(entry.key)

    def moved_down(self, cause: str, runtime: float | None) -> None:
        """The budget's end moved down: the guests not yet begun planned again (``plan.replan``)."""
        with self._lock:
            waiting = [NotBegun(e.key, e.guest.name, e.effective.settings.priority, self._chains[e.key],
                                e.guest.memory_bytes)
                       for e in self.plan.active if e.key not in self._begun]
            under_way: dict[str, float] = {}
            for key in self._saving:
                entry = self._entries[key]
                under_way[entry.guest.connection] = under_way.get(entry.guest.connection, 0.0) + entry.guest.memory_bytes
            seconds_left = self.budget.time_left()
            moved = replan(waiting, seconds_left=seconds_left, rates=self.plan.rates, under_way=under_way, cause=cause)
            for move in moved:
                self._chains[move.key], self._moved[move.key] = move.actions, move
            found = ReplanRound(time.time(), cause, runtime, seconds_left, moved)
            self.rounds.append(found)
        for move in moved:  # outside the lock: a waiter woken here takes it in begin()
            self.save_slots.cancel(move.key)
        log.warning("%s", found.describe(), extra={} if runtime is None else {"MGSAVE_UPS_RUNTIME": f"{runtime:g}"})
