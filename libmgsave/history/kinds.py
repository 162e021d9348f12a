"""The closed sets a pass speaks in: the kinds of pass, the actions, the outcomes and their
severity, what a guest waited for, which pass recorded an entry, the kinds of host shutdown.

Part of the bottom floor (``libmgsave.history``): imports nothing of mgsave.
"""

from __future__ import annotations

import enum


class PassKind(enum.StrEnum):
    """The kinds of pass: each writes its own samples and (shutdown, boot) its own record."""

    SHUTDOWN = "shutdown"
    BOOT = "boot"
    EVACUATE = "evacuate"  # the shutdown outline cut down to migrations; the host stays up
    RETURN = "return"  # the boot plan cut down to the guests coming home from a peer


class Action(enum.StrEnum):
    MIGRATE = "migrate"  # live migration to ``GuestPlan.peer``
    SAVE = "save"  # managed save
    SAVE_TO_FILE = "save-to-file"  # transient guest: save to images/<uuid>.save
    SHUTDOWN = "shutdown"
    POWEROFF = "poweroff"
    RESUME = "resume"  # start from the managed-save image
    RESTORE = "restore"  # recreate a transient guest from its save file
    START = "start"  # cold boot
    RETURN = "return"  # migrate home from ``GuestPlan.peer``, where the last shutdown sent it
    SKIP = "skip"


class Severity(enum.Enum):
    """How a guest (or a pass) fared: the exit code and the journal priority follow it."""

    OK = "ok"  # the guest got its first choice: where the policy wants it
    DEGRADED = "degraded"  # handled, but not as the policy's first choice (its memory state is gone)
    FAILED = "failed"  # it may be in any state: the admin must look


class Outcome(enum.StrEnum):
    """What happened to one guest in one pass; the values are what records and ``--json`` say."""

    PLANNED = "planned"  # a dry run: the plan, not carried out
    SKIPPED = "skipped"  # nothing to do: the plan says so, or (boot) someone else already started it
    PENDING = "pending"  # record only: running when the shutdown pass began, not handled yet
    # shutdown
    MIGRATED = "migrated"  # live-migrated to a peer host: it runs there (the record says which)
    STAYED = "stayed"  # evacuate: its migration failed or could not begin; it runs on here
    SAVED = "saved"  # managed-saved: libvirt resumes it from its image at the next start
    SAVED_TO_FILE = "saved-to-file"  # a transient guest saved to a file under images/
    SHUT_DOWN = "shut-down"
    POWERED_OFF = "powered-off"
    # boot
    RESUMED = "resumed"
    RESTORED = "restored"  # a transient guest recreated from its save file
    STARTED = "started"  # a cold boot the policy asked for
    BOOTED_FRESH = "booted-fresh"  # a cold boot where a resume was due: its memory state is lost
    LEFT_OFF = "left-off"  # its resume failed and the policy (or a kept image) says leave it off
    RETURNED = "returned"  # migrated home from the peer the last shutdown sent it to
    ON_PEER = "on-peer"  # due to come home, but it stays on its peer (unreachable, or the migration failed)
    # either pass
    VANISHED = "vanished"  # undefined or stopped by someone else while the pass ran
    FAILED = "failed"  # every step failed: at shutdown the guest may still be running
    INTERRUPTED = "interrupted"  # the pass was stopped (SIGTERM, SIGINT) before it handled the guest

    @property
    def severity(self) -> Severity:
        """The outcome's own severity; a guest's also depends on its first choice (``GuestResult``)."""
        return _SEVERITY.get(self, Severity.OK)

    @property
    def step(self) -> Action | None:
        """The step whose success is this outcome, or None (nothing was done, or it went wrong)."""
        return _STEP_OF_OUTCOME.get(self)


_STEP_OF_OUTCOME = {
    Outcome.MIGRATED: Action.MIGRATE,
    Outcome.RETURNED: Action.RETURN,
    Outcome.SAVED: Action.SAVE,
    Outcome.SAVED_TO_FILE: Action.SAVE_TO_FILE,
    Outcome.SHUT_DOWN: Action.SHUTDOWN,
    Outcome.POWERED_OFF: Action.POWEROFF,
    Outcome.RESUMED: Action.RESUME,
    Outcome.RESTORED: Action.RESTORE,
    Outcome.STARTED: Action.START,
}

_SEVERITY = {
    Outcome.PENDING: Severity.FAILED,
    Outcome.FAILED: Severity.FAILED,
    Outcome.INTERRUPTED: Severity.FAILED,
    Outcome.BOOTED_FRESH: Severity.DEGRADED,
    Outcome.LEFT_OFF: Severity.DEGRADED,
    Outcome.ON_PEER: Severity.DEGRADED,
    Outcome.STAYED: Severity.DEGRADED,
}


class WaitKind(enum.StrEnum):
    """What a guest waited for during a pass, besides its steps' own work."""

    ORDER = "order"  # the earlier order groups (its ``order``, or the guests it is after there)
    AFTER = "after"  # the guests it is after in its own order group (at shutdown: those that must stop first)
    SLOT = "slot"  # a save or start slot (limits.max_parallel_*), and limits.start_delay
    READY = "ready"  # its readiness check (ready: agent or a delay) after it started


class RecordedBy(enum.StrEnum):
    """The passes that add entries of their own to the shutdown record besides the shutdown
    pass (whose entries say nothing of it): what they did stands beside the shutdown pass's
    entries for the other guests, never in their place."""

    EVACUATE = "evacuate"
    RETURN = "return"


class ShutdownKind(enum.StrEnum):
    """Which way the host goes down, as logind's metadata or systemd's queued job says; the
    first three come back up (``on_reboot``), the others do not (``on_shutdown``)."""

    REBOOT = "reboot"
    KEXEC = "kexec"
    SOFT_REBOOT = "soft-reboot"
    POWEROFF = "poweroff"
    HALT = "halt"
    UNKNOWN = "unknown"  # nobody said (systemd before 255 in logind's delay phase; a pass run by hand): on_shutdown

    @property
    def comes_back(self) -> bool:
        """The host (or its userspace) comes straight back up: the guests' ``on_reboot`` chain."""
        return self in (ShutdownKind.REBOOT, ShutdownKind.KEXEC, ShutdownKind.SOFT_REBOOT)
