"""The shutdown pass's time: one deadline, asked by everything that carries out the pass.

The deadline ends the pass (``limits.shutdown_deadline``, ``--deadline``); ``DEADLINE_RESERVE``
seconds before it, every step but a guest's last gives up, so that the last one (a poweroff)
still has time. The reserve is subtracted here and nowhere else: the executor asks a ``Budget``
whether a step may begin, until when it may wait, how long a migration may run, and what a
re-plan of the guests started meanwhile sees; the plan asks ``for_steps`` of its seconds.

A ``Budget`` reads its end through one method (``ends_at``), so that a deadline that moves while
the pass runs (a UPS's runtime, re-read every few seconds) changes this class alone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

# Time kept back at the end of the shutdown deadline for the last fallback step (a poweroff):
# a deadline must be longer, or no guest would get anything but that last step.
DEADLINE_RESERVE = 10.0

Clock = Callable[[], float]
# Told each time the end moves down: what moved it, and the UPS's runtime then (None: not known).
Listener = Callable[[str, "float | None"], None]


def for_steps(seconds: float) -> float:
    """Of a deadline ``seconds`` away, the seconds every step but a guest's last may use."""
    return seconds - DEADLINE_RESERVE


class Budget:
    """The deadline of one pass, on ``clock`` (``time.monotonic`` by default)."""

    def __init__(self, deadline_at: float, *, clock: Clock = time.monotonic):
        self._deadline_at = deadline_at
        self._clock = clock
        self._listeners: list[Listener] = []

    @classmethod
    def starting_now(cls, seconds: float, *, clock: Clock = time.monotonic) -> Budget:
        """A deadline ``seconds`` from now."""
        return cls(clock() + seconds, clock=clock)

    @classmethod
    def unbounded(cls) -> Budget:
        """No deadline (a boot pass's migration home)."""
        return cls(float("inf"))

    def now(self) -> float:
        return self._clock()

    def ends_at(self) -> float:
        """When the pass must be over (on the budget's clock)."""
        return self._deadline_at

    def lower_end(self, at: float, cause: str = "the deadline moved down", runtime: float | None = None) -> bool:
        """Move the end down to ``at`` (a UPS's runtime falling faster than planned); an end
        later than the present one is ignored: the end never moves up. True when it moved;
        then every listener is told (on this thread), after the end has moved. A float's
        assignment is atomic: readers on other threads see the old end or the new."""
        if at >= self._deadline_at:
            return False
        self._deadline_at = at
        for listener in list(self._listeners):
            listener(cause, runtime)
        return True

    @contextlib.contextmanager
    def listening(self, listener: Listener) -> Iterator[None]:
        """``listener`` told of every move down of the end while the block runs (the executor
        re-plans the guests not yet begun)."""
        self._listeners.append(listener)
        try:
            yield
        finally:
            self._listeners.remove(listener)

    def give_up_at(self) -> float:
        """The moment a step that is not a guest's last gives up (waiting for a slot, for a
        guest to shut down, for a save under way, a migration's run): the end less the reserve."""
        return self.ends_at() - DEADLINE_RESERVE

    def time_left(self) -> float:
        """The seconds until the end, never negative: what a re-plan of the guests found later is
        given as its deadline (the plan keeps the reserve itself, with ``for_steps``)."""
        return max(0.0, self.ends_at() - self.now())

    def left_for_steps(self) -> float:
        """The seconds a step that is not a guest's last may still use (negative once past)."""
        return self.give_up_at() - self.now()

    def past(self) -> bool:
        """True once only a guest's last step may begin."""
        return self.left_for_steps() <= 0

    def may_begin(self, estimate: float) -> bool:
        """Whether a step estimated to take ``estimate`` seconds can end before ``give_up_at``."""
        return estimate <= self.left_for_steps()

    def wait_until(self, timeout: float) -> float:
        """The moment a wait of at most ``timeout`` seconds from now gives up: its timeout, or
        ``give_up_at`` when that comes first."""
        return min(self.now() + timeout, self.give_up_at())

    def overdue(self) -> bool:
        """True once the end itself has passed (a save still running then, with no progress for
        long, is aborted)."""
        return self.now() > self.ends_at()
