"""``mgsave power watch``'s loop: read the UPS every ``power.poll``, ask ``decide``, log, and
start the host's shutdown when it says so. Every question that costs (the UPS, the plan, the
command) comes in through ``WatchHooks``, so that the loop itself is all that is here.

The loop never ends by itself: systemd stops the watch (its unit is not ordered after anything
the host's shutdown waits for) once a shutdown is really under way. A shutdown started is given
``UNDER_WAY_READINGS`` readings of the UPS to take the watch down with the host; meanwhile it is
not started again (said once). A watch still reading after that saw its shutdown cancelled
(``shutdown -c``, ``systemctl cancel``) or fail: it says so and, when the UPS still says so,
starts it again. Back on line, the watch stands down and forgets it.

The plan's need is asked only on battery, and again only every ``PLAN_EVERY`` seconds: it lists
the guests and may ask the peers, which is too much for every poll. A new outage asks afresh.
An unreadable UPS is logged once, then at most every ``UNREADABLE_LOG_EVERY`` seconds, and when
it answers again; the decisions on battery are logged when they change and once a minute.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from libmgsave import units
from libmgsave.policy import Power
from libmgsave.power.decide import Decision, Verdict, decide
from libmgsave.power.reading import PowerState, UpsReading

log = logging.getLogger("mgsave")

PLAN_EVERY = 60.0  # seconds between two computations of the plan's need while on battery
UNREADABLE_LOG_EVERY = 300.0  # seconds between two log lines of a UPS that stays unreadable
ON_BATTERY_LOG_EVERY = 60.0  # seconds between two log lines of the same decision on battery
# MESSAGE_ID of the line that says the watch starts the host's shutdown (journalctl MESSAGE_ID=...)
HOST_SHUTDOWN = "6f0b1d7e4c2a4f08a3b5e9d1c7a26e44"
# Readings of the UPS a shutdown started is given to take the watch down with the host (a minute
# at the default power.poll of 5 s); one still reading after that was cancelled or failed.
UNDER_WAY_READINGS = 12


@dataclass(frozen=True)
class WatchHooks:
    """What the watch reads and does, given to it (the real ones, or a test's)."""
    read: Callable[[], UpsReading]  # one reading of the UPS; never raises
    needed: Callable[[], float]  # the seconds the shutdown plan needs now; never raises
    start_shutdown: Callable[[Decision], bool]  # runs the shutdown command; True when it succeeded
    sleep: Callable[[float], None]
    clock: Callable[[], float] = time.monotonic


def watch(power: Power, hooks: WatchHooks) -> None:
    """Watches until stopped (a signal: ``hooks.sleep`` or a hook raises)."""
    logbook = _Logbook(str(power.ups), hooks.clock)
    started = _Started(str(power.ups), power.poll)
    needed_at: float | None = None
    needed: float | None = None
    while True:
        reading = hooks.read()
        if reading.state is PowerState.ON_BATTERY:
            if needed_at is None or hooks.clock() - needed_at >= PLAN_EVERY:
                needed, needed_at = hooks.needed(), hooks.clock()
        elif reading.state is PowerState.ONLINE:
            needed = needed_at = None  # the next outage plans afresh
            started.stand_down()
        decision = decide(reading, needed if reading.state is PowerState.ON_BATTERY else None, power.margin)
        log.debug("UPS %s polled: %s (%s)", power.ups, decision.verdict, decision.why)
        started.read()
        if decision.verdict is Verdict.SHUT_DOWN_NOW and started.under_way(decision):
            pass  # started already: said once by _Started, not again every reading
        else:
            logbook.log(decision)
            if decision.verdict is Verdict.SHUT_DOWN_NOW and hooks.start_shutdown(decision):
                started.began()
        hooks.sleep(power.poll)


class _Started:
    """The host's shutdown this watch started: whether it is still under way (given
    ``UNDER_WAY_READINGS`` readings), said in the journal when it is not started again and when
    it seems cancelled."""

    def __init__(self, ups: str, poll: float):
        self.ups, self.poll = ups, poll
        self.readings: int | None = None  # readings since the shutdown was started; None: none started
        self.said = False

    def fields(self, decision: Decision) -> dict[str, object]:
        """A decision's journal fields but its verdict: MGSAVE_DECISION=shut-down-now marks the
        lines that start the host's shutdown, and these do not."""
        return {**fields(self.ups, decision), "MGSAVE_DECISION": None}

    def began(self) -> None:
        self.readings, self.said = 0, False

    def read(self) -> None:
        if self.readings is not None:
            self.readings += 1

    def stand_down(self) -> None:
        self.readings = None

    def under_way(self, decision: Decision) -> bool:
        """Whether the shutdown started is taken as under way (then not started again)."""
        if self.readings is None:
            return False
        ago = units.seconds(self.readings * self.poll)
        if self.readings <= UNDER_WAY_READINGS:
            if not self.said:
                self.said = True
                log.warning("UPS %s: %s: the host's shutdown started %s ago is under way: not starting it again",
                            self.ups, decision.why, ago, extra=self.fields(decision))
            return True
        log.error("UPS %s: the host's shutdown started %s ago has not happened (cancelled, or it failed) and the "
                  "watch still runs: watching again", self.ups, ago, extra=self.fields(decision))
        self.readings = None
        return False


def fields(ups: str, decision: Decision) -> dict[str, object]:
    """The journal fields of a decision (None left out by the journal)."""
    def whole(value: float | None) -> int | None:
        return None if value is None else round(value)

    return {"MGSAVE_UPS": ups, "MGSAVE_POWER_STATE": str(decision.state), "MGSAVE_DECISION": str(decision.verdict),
            "MGSAVE_RUNTIME_SECONDS": whole(decision.runtime), "MGSAVE_NEEDED_SECONDS": whole(decision.needed),
            "MGSAVE_MARGIN_SECONDS": whole(decision.margin)}


class _Logbook:
    """Which decisions are logged: each change, a repeated one only now and then."""

    def __init__(self, ups: str, clock: Callable[[], float]):
        self.ups, self.clock = ups, clock
        self.last: Decision | None = None
        self.logged_at = float("-inf")

    def log(self, decision: Decision) -> None:
        now, last = self.clock(), self.last
        changed = last is None or (last.verdict, last.state) != (decision.verdict, decision.state)
        unreadable = decision.verdict is Verdict.UNKNOWN
        every = UNREADABLE_LOG_EVERY if unreadable else ON_BATTERY_LOG_EVERY
        repeat = decision.state is not PowerState.ONLINE and now - self.logged_at >= every
        self.last = decision
        if not (changed or repeat or decision.verdict is Verdict.SHUT_DOWN_NOW):
            return
        self.logged_at = now
        extra = fields(self.ups, decision)
        if decision.verdict is Verdict.SHUT_DOWN_NOW:
            log.warning("UPS %s: %s: starting the host's shutdown", self.ups, decision.why,
                        extra={**extra, "MESSAGE_ID": HOST_SHUTDOWN})
        elif unreadable:
            log.warning("UPS %s: %s; still watching, and no shutdown is started on that alone", self.ups,
                        decision.why, extra=extra)
        elif decision.state is PowerState.ONLINE:
            back = last is not None and last.state is not PowerState.ONLINE
            log.info("UPS %s: %s%s", self.ups, decision.why, ": standing down" if back else "", extra=extra)
        else:
            log.warning("UPS %s: %s: waiting", self.ups, decision.why, extra=extra)


class Stopped(Exception):
    """SIGTERM or SIGINT: the watch ends at once."""


class StopOnSignal:
    """SIGTERM and SIGINT end the watch at once (the handler raises ``Stopped`` in the main
    thread, out of any wait), except while the shutdown command runs (``deferred``): killing
    that half-way would help no one; the stop then comes right after it."""

    def __init__(self) -> None:
        self.deferring = False
        self.pending: signal.Signals | None = None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.deferring:
            self.pending = signal.Signals(signum)
            return
        raise Stopped(signal.Signals(signum).name)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending:
            raise Stopped(self.pending.name)
