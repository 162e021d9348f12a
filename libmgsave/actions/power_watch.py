"""``mgsave power watch`` (run by ``mgsave-power.service``): follow the UPS of the policy's
``power:`` and start the host's shutdown when the battery left is no more than the shutdown
plan needs plus the margin, or at once on the UPS's low-battery or forced-shutdown flag.

The loop and its decision are ``power.watch`` and ``power.decide``; this is the outline: the
policy, the hooks that read the UPS, plan the shutdown as the pass would and run the command.
"""

from __future__ import annotations

import logging
import subprocess
import time

from libmgsave import units
from libmgsave.actions import DONE, Done, inputs
from libmgsave.context import Context
from libmgsave.errors import MgsaveError, PolicyError, Problem
from libmgsave.history import HostShutdown, ShutdownKind
from libmgsave.interrupt import wait_bound
from libmgsave.power.decide import Decision
from libmgsave.power.need import needed_seconds
from libmgsave.power.ups import read_ups
from libmgsave.power.watch import Stopped, StopOnSignal, WatchHooks, watch

log = logging.getLogger("mgsave")

COMMAND_TIMEOUT = 60.0  # seconds the shutdown command may take (systemctl poweroff returns at once)


def run_power_watch(ctx: Context) -> Done:
    stop = StopOnSignal()
    stop.install()
    try:
        _watch(ctx, stop)
    except Stopped as signal_name:
        log.info("the UPS watch stops (%s)", signal_name)
    return DONE


def _watch(ctx: Context, stop: StopOnSignal) -> None:
    use = inputs.pass_policy(ctx)
    policy = use.policy
    if policy.power is None:
        raise PolicyError([Problem(ctx.policy_path, None, None, "power",
                                   "the policy has no power: section: there is no UPS to watch",
                                   "name the UPS in power.ups, or disable mgsave-power.service")])
    power = policy.power
    log.info("watching the UPS %s every %s (margin %s); the shutdown command: %s", power.ups,
             units.seconds(power.poll), units.seconds(power.margin), " ".join(power.shutdown_command))
    hooks = WatchHooks(read=lambda: read_ups(power)[0], needed=lambda: _needed(ctx, policy),
                       start_shutdown=lambda decision: _start_shutdown(power.shutdown_command, decision, stop),
                       sleep=_sleep)
    watch(power, hooks)


def _needed(ctx: Context, policy) -> float:  # noqa: ANN001
    """The seconds the shutdown plan of the guests running now needs; when the guests cannot be
    listed, the fixed deadline (the pass never takes longer)."""
    try:
        connections, warnings = inputs.connect(policy)
        try:
            guests = inputs.inventory(connections, policy, warnings)
            plan = inputs.shutdown_plan(ctx, guests, policy, connections=connections,
                                        host_shutdown=HostShutdown(ShutdownKind.POWEROFF, "the UPS runs out"))
        finally:
            for host in connections.hosts():
                host.close()
    except Stopped:
        raise
    except Exception as error:  # noqa: BLE001 - the watch must go on: counting the deadline is safe
        why = error.message if isinstance(error, MgsaveError) else f"{type(error).__name__}: {error}"
        log.warning("the shutdown plan cannot be made (%s): counting the whole shutdown deadline, %s", why,
                    units.seconds(policy.limits.shutdown_deadline), exc_info=not isinstance(error, MgsaveError))
        return policy.limits.shutdown_deadline
    for warning in warnings:
        log.warning("%s", warning)
    needed = needed_seconds(plan)
    log.info("the shutdown plan of the %s running needs %s", units.plural(len(plan.active), "guest"),
             units.seconds(needed), extra={"MGSAVE_NEEDED_SECONDS": round(needed)})
    return needed


def _start_shutdown(command: tuple[str, ...], decision: Decision, stop: StopOnSignal) -> bool:
    """Runs the shutdown command (no shell); True when it exited 0. Not cut short by a stop."""
    with stop.deferred():
        try:
            result = subprocess.run(list(command), stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT, check=False)
        except (OSError, subprocess.SubprocessError) as error:
            log.error("the shutdown command %s failed: %s; trying again at the next reading", command[0], error)
            return False
    if result.returncode != 0:
        log.error("the shutdown command %s exited %d; trying again at the next reading", " ".join(command),
                  result.returncode)
        return False
    log.warning("the host's shutdown is started (%s): the watch goes on, and starts it again only if it "
                "seems cancelled", decision.why)
    return True


def _sleep(seconds: float) -> None:
    time.sleep(wait_bound(seconds))  # a signal ends it at once (StopOnSignal raises)
