"""``mgsave shutdown --if-host-going-down`` (``mgsave.service``'s ExecStop=): the shutdown pass
only when the host is going down or its guests are about to be stopped.

systemd runs ExecStop= at every stop of the unit, so without this ``systemctl restart mgsave``
and ``systemctl stop mgsave`` saved every guest of a host that stayed up, with nothing to bring
them back. ``hostdown.decide`` judges what systemd and logind say (``early.host_facts``); when
the host stays up, nothing is saved, a warning says so and how to save the guests now, and the
pass is armed again (a restart does that itself; after a plain stop a start of the unit is
queued, unless the admin disabled or masked it). When systemd or logind cannot be asked the pass
runs: at a real shutdown, saving matters most. The same facts say which kind of shutdown it is
(``hostdown.shutdown_kind``: a reboot runs the guests' ``on_reboot`` chains). ``mgsave shutdown``
run by hand never asks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from libmgsave import early, hostdown, notify
from libmgsave.errors import ExitCode
from libmgsave.history import HostShutdown, ShutdownKind
from libmgsave.hostdown import ARMING_UNIT, Decision, Rearm, Verdict

log = logging.getLogger("mgsave")

NOT_SAVED = ("%s is being stopped, but the host is not shutting down (%s): no guest was saved. "
             "To save the guests now, run 'mgsave shutdown'.")
REARMED = {
    Rearm.RESTARTING: "It is being restarted, so the shutdown pass stays armed.",
    Rearm.QUEUE_START: f"The shutdown pass is armed again: {ARMING_UNIT} is started again once this stop is "
                       f"over (to disarm it, 'systemctl disable --now {ARMING_UNIT}').",
    Rearm.LEFT_DISARMED: f"{ARMING_UNIT} is disabled or masked, so it is not started again: the next "
                         f"shutdown saves no guest until 'systemctl start {ARMING_UNIT}'.",
}


@dataclass(frozen=True)
class PassHeldBack:
    """The unit was stopped on a host that stays up: no pass ran (exit 0)."""

    decision: Decision

    def exit_code(self) -> int:
        return ExitCode.OK


def hold_back() -> PassHeldBack | HostShutdown:
    """When the pass is to run (logged with why), the kind of shutdown it runs for (logged too:
    it chooses each guest's chain); else what was done instead."""
    facts = early.host_facts()
    decision = hostdown.decide(facts)
    if decision.runs_pass:
        if decision.verdict is Verdict.UNKNOWN:
            log.warning("cannot tell whether the host is going down (%s): running the shutdown pass", decision.why)
        else:
            log.info("running the shutdown pass: %s", decision.why)
        return _kind(hostdown.shutdown_kind(facts))
    log.warning(NOT_SAVED + " %s", ARMING_UNIT, decision.why, _rearm(decision.rearm))
    notify.status("host not shutting down: no guest saved (run 'mgsave shutdown' to save them now)")
    return PassHeldBack(decision)


def _kind(shutdown: HostShutdown) -> HostShutdown:
    if shutdown.kind is ShutdownKind.UNKNOWN:
        log.warning("cannot tell which kind of shutdown this is (%s): every guest gets its on_shutdown chain",
                    shutdown.why)
    else:
        chains = "on_reboot chain (on_shutdown where it has none)" if shutdown.kind.comes_back else "on_shutdown chain"
        log.info("the host is going down for a %s (%s): each guest gets its %s", shutdown.kind, shutdown.why, chains)
    return shutdown


def _rearm(rearm: Rearm) -> str:
    if rearm is not Rearm.QUEUE_START:
        return REARMED[rearm]
    try:
        early.queue_rearm()
    except Exception as error:  # noqa: BLE001 - the stop itself must still succeed
        log.error("could not queue a start of %s (%s)", ARMING_UNIT, error)
        return (f"It could not be armed again: the next shutdown saves no guest until "
                f"'systemctl start {ARMING_UNIT}'.")
    return REARMED[rearm]
