"""Pure: is the host going down, or only ``mgsave.service`` being stopped?

``mgsave.service``'s ExecStop= is the shutdown pass, and systemd runs it at every stop of the
unit: at a poweroff, but also at ``systemctl restart mgsave`` (an admin's reflex after editing
the policy) and ``systemctl stop mgsave``, which would save every guest while the host stays up,
with nothing to bring them back. So the unit's stop (``mgsave shutdown --if-host-going-down``)
asks first, and this module decides from what systemd and logind said (``early.host_facts``):

- systemd's ``SystemState`` is ``stopping`` (``shutdown.target`` is active or has a start job:
  poweroff, reboot, halt, kexec, soft-reboot all pull it in), or a start job is queued for one
  of the targets that take the host down;
- logind is preparing a shutdown (``PreparingForShutdown``): the delay phase in which
  ``mgsave watch`` stops the unit, before systemd has queued anything;
- a stop job is queued for what holds the guests' QEMU processes (libvirt's machine scopes, the
  slice they live in, or ``virt-guest-shutdown.target``, which the scopes are ordered before):
  ``systemctl isolate rescue.target`` stops that target, as it does libvirt-guests.

Which way the host goes down (``shutdown_kind``): logind's ``PreparingForShutdownWithMetadata``
(its ``type``: systemd 255 and later) while it waits for its delay inhibitors, which is when
``mgsave watch`` starts the pass; else the target systemd has a start job for. systemd 252 has no
metadata, and in logind's delay phase no job is queued yet: the kind is then not known.

Anything else is an admin stopping the unit: no pass. When systemd or logind could not be asked,
the pass runs: at a real shutdown, saving matters most.

Seen in the systemd container (systemd 252): at a poweroff by systemd, ``SystemState`` was
``stopping`` with start jobs for ``poweroff.target`` and ``shutdown.target`` and stop jobs for
``virt-guest-shutdown.target`` and ``machine.slice``; at a poweroff begun by ``mgsave watch``,
only the unit's own stop job, ``running``, and logind preparing; at ``systemctl restart`` and
``stop``, only the unit's own ``restart`` or ``stop`` job; at ``isolate rescue.target``,
``maintenance`` and a stop job for ``virt-guest-shutdown.target`` (the machine scopes have
IgnoreOnIsolate=yes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from libmgsave.history import HostShutdown, ShutdownKind

ARMING_UNIT = "mgsave.service"
# Their start means the host goes down (shutdown.target is pulled in by each of the others).
SHUTDOWN_TARGETS = frozenset({"poweroff.target", "reboot.target", "halt.target", "kexec.target",
                              "soft-reboot.target", "shutdown.target", "final.target", "exit.target"})
# The targets whose start job says which kind of shutdown it is (shutdown.target: any of them).
KIND_OF_TARGET = {"reboot.target": ShutdownKind.REBOOT, "kexec.target": ShutdownKind.KEXEC,
                  "soft-reboot.target": ShutdownKind.SOFT_REBOOT, "poweroff.target": ShutdownKind.POWEROFF,
                  "halt.target": ShutdownKind.HALT}
# logind's ``type`` metadata (its HandleAction names) for the same kinds.
KIND_OF_LOGIND_TYPE = {kind.value: kind for kind in KIND_OF_TARGET.values()}
# Their stop means the guests' QEMU processes are about to be stopped.
GUEST_HOLDERS = frozenset({"virt-guest-shutdown.target", "machine.slice"})
MACHINE_SCOPE = ("machine-", ".scope")
# The unit file states in which an admin has taken the unit away: a stop is left at that.
DISARMED_STATES = frozenset({"disabled", "masked", "masked-runtime"})


@dataclass(frozen=True)
class Job:
    """One of systemd's queued jobs (``ListJobs``): the unit and the job type (start, stop, restart...)."""

    unit: str
    type: str


@dataclass(frozen=True)
class HostFacts:
    """What systemd and logind said; ``None``: that one could not be asked (``problems`` say why)."""

    system_state: str | None = None
    jobs: tuple[Job, ...] | None = None
    preparing_for_shutdown: bool | None = None
    unit_file_state: str | None = None  # mgsave.service's: enabled, disabled, masked...
    # logind's PreparingForShutdownWithMetadata ``type`` (systemd >= 255, while it prepares one);
    # None: not preparing, or a logind without it
    shutdown_type: str | None = None
    problems: tuple[str, ...] = ()


class Verdict(enum.Enum):
    HOST_GOING_DOWN = "host-going-down"
    GUESTS_STOPPING = "guests-stopping"
    NOT_GOING_DOWN = "not-going-down"
    UNKNOWN = "unknown"  # the check could not be made: the pass runs

    @property
    def runs_pass(self) -> bool:
        return self is not Verdict.NOT_GOING_DOWN


class Rearm(enum.Enum):
    """After a stop that ran no pass: how the shutdown pass is armed again."""

    RESTARTING = "restarting"  # the stop is half of a restart: systemd starts the unit again
    QUEUE_START = "queue-start"  # queue a start of the unit, to run once this stop is over
    LEFT_DISARMED = "left-disarmed"  # the admin disabled or masked the unit


@dataclass(frozen=True)
class Decision:
    """Whether the shutdown that is under way runs a pass, and why."""
    verdict: Verdict
    why: str  # for the log: what showed it, or what could not be asked
    rearm: Rearm | None = None  # only when the verdict runs no pass

    @property
    def runs_pass(self) -> bool:
        return self.verdict.runs_pass


def decide(facts: HostFacts) -> Decision:
    """Whether the stop of ``mgsave.service`` runs the shutdown pass, and why."""
    down = _going_down(facts)
    if down:
        return Decision(Verdict.HOST_GOING_DOWN, down)
    guests = _guests_stopping(facts.jobs or ())
    if guests:
        return Decision(Verdict.GUESTS_STOPPING, guests)
    if facts.system_state is None or facts.jobs is None or facts.preparing_for_shutdown is None:
        return Decision(Verdict.UNKNOWN, "; ".join(facts.problems) or "systemd or logind did not answer")
    return Decision(Verdict.NOT_GOING_DOWN, f"systemd is {facts.system_state}, no shutdown is queued "
                                            f"and logind announced none", _rearm(facts))


def _going_down(facts: HostFacts) -> str | None:
    if facts.system_state == "stopping":
        return "systemd is stopping the host"
    for job in facts.jobs or ():
        if job.type == "start" and job.unit in SHUTDOWN_TARGETS:
            return f"{job.unit} has a start job"
    if facts.preparing_for_shutdown:
        return "logind announced a shutdown"
    return None


def _guests_stopping(jobs: tuple[Job, ...]) -> str | None:
    for job in jobs:
        scope = job.unit.startswith(MACHINE_SCOPE[0]) and job.unit.endswith(MACHINE_SCOPE[1])
        if job.type == "stop" and (job.unit in GUEST_HOLDERS or scope):
            return f"{job.unit} is being stopped, and the guests with it"
    return None


def _rearm(facts: HostFacts) -> Rearm:
    if any(job.unit == ARMING_UNIT and job.type == "restart" for job in facts.jobs or ()):
        return Rearm.RESTARTING
    if facts.unit_file_state in DISARMED_STATES:
        return Rearm.LEFT_DISARMED
    return Rearm.QUEUE_START


def shutdown_kind(facts: HostFacts) -> HostShutdown:
    """Which kind of shutdown is under way: logind's word first (it is the one that knows during
    its delay phase), then the target systemd has a start job for; else unknown, and why."""
    said = KIND_OF_LOGIND_TYPE.get(facts.shutdown_type or "")
    if said:
        return HostShutdown(said, f"logind announced a {said}")
    for job in facts.jobs or ():
        if job.type == "start" and job.unit in KIND_OF_TARGET:
            return HostShutdown(KIND_OF_TARGET[job.unit], f"{job.unit} has a start job")
    if facts.shutdown_type:
        why = f"logind announced a shutdown of a kind mgsave does not know ({facts.shutdown_type!r})"
    elif facts.jobs is None:
        why = "systemd's jobs could not be asked" + (f" ({'; '.join(facts.problems)})" if facts.problems else "")
    else:
        why = "neither logind nor systemd's jobs said which (systemd before 255 announces no kind)"
    return HostShutdown(ShutdownKind.UNKNOWN, why)
