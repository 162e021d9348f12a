"""Planning again while the shutdown pass runs: the deadline moved down (the UPS's runtime fell
faster than planned), and the guests whose work has not begun get what is left. Pure.

Their saves are kept highest ``priority`` first (the plan's order among equals) while each still
ends, on its connection's rate, within the seconds the steps may use (the deadline less the
reserve for every guest's last step); a save that no longer does is dropped from its guest's
chain, which goes on with its next, cheaper step (``shutdown``, ``poweroff``). So the lowest
priorities give up their saves first and the highest are on disk before the power goes. The
saves already under way keep their connection busy: their bytes are counted before any other's.
Migrations are left as they are (their own budget gives up on time); a chain's last step is
never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from libmgsave import units
from libmgsave.budget import DEADLINE_RESERVE, for_steps
from libmgsave.plan.model import DEFAULT_SAVE_THROUGHPUT, Action, GuestKey, SaveRate

SAVES = (Action.SAVE, Action.SAVE_TO_FILE)


@dataclass(frozen=True)
class NotBegun:
    """A guest whose work has not begun: the steps its chain has left, and what its save costs."""

    key: GuestKey
    name: str
    priority: int
    actions: tuple[Action, ...]  # the chain as it stands now
    memory_bytes: int

    @property
    def connection(self) -> str:
        return self.key[0]


@dataclass(frozen=True)
class Replanned:
    """A guest moved to cheaper steps: its chain from now on, and why."""

    key: GuestKey
    name: str
    actions: tuple[Action, ...]
    dropped: Action  # the step it no longer gets
    why: str

    def to_dict(self) -> dict:
        return {"name": self.name, "connection": self.key[0], "uuid": self.key[1],
                "actions": [str(a) for a in self.actions], "dropped": str(self.dropped), "why": self.why}


def replan(guests: Sequence[NotBegun], *, seconds_left: float, rates: Mapping[str, SaveRate] | None = None,
           under_way: Mapping[str, float] | None = None, cause: str = "the deadline moved down") -> tuple[Replanned, ...]:
    """The guests of ``guests`` that must move to cheaper steps to fit ``seconds_left`` (from
    now to the deadline), lowest priority first, in the order of ``guests``; the others keep
    their chains. ``rates``: each connection's save rate (the built-in default where none is
    given); ``under_way``: the bytes each connection still has to save for the saves that have
    begun (an upper bound: their whole memory); ``cause``: what moved the deadline, for the reasons."""
    room = for_steps(seconds_left)
    planned = dict(under_way or {})  # bytes each connection saves before the next save kept
    moved: dict[GuestKey, Replanned] = {}
    for guest in by_priority(guests):
        if guest.actions[0] not in SAVES or len(guest.actions) < 2:
            continue
        rate = _rate(rates, guest.connection)
        end = (planned.get(guest.connection, 0.0) + guest.memory_bytes) / rate
        if end <= room:
            planned[guest.connection] = planned.get(guest.connection, 0.0) + guest.memory_bytes
            continue
        moved[guest.key] = _moved(guest, end, room, seconds_left, cause)
    return tuple(moved[g.key] for g in guests if g.key in moved)


def by_priority(guests: Iterable[NotBegun]) -> list[NotBegun]:
    """Highest priority first; among equals, the order given (the plan's)."""
    return sorted(guests, key=lambda g: -g.priority)


def _rate(rates: Mapping[str, SaveRate] | None, connection: str) -> float:
    rate = (rates or {}).get(connection)
    return rate.bytes_per_second if rate and rate.bytes_per_second > 0 else DEFAULT_SAVE_THROUGHPUT


def _moved(guest: NotBegun, end: float, room: float, seconds_left: float, cause: str) -> Replanned:
    rest = guest.actions[1:]
    if room <= 0:
        fits = (f"only {units.seconds(seconds_left)} are left, no more than the {units.seconds(DEADLINE_RESERVE)} "
                f"kept for every guest's last step")
    else:
        fits = (f"its save would end about {units.seconds(end)} from now, after the saves of the guests of higher "
                f"priority, past the {units.seconds(room)} the steps may use of the {units.seconds(seconds_left)} left")
    why = (f"re-planned ({cause}): {fits}: its {guest.actions[0]} is dropped (priority {guest.priority}), "
           f"it gets {' -> '.join(rest)}")
    return Replanned(guest.key, guest.name, rest, guest.actions[0], why)
