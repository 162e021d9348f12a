"""What every command needs, derived once by ``cli`` from the arguments and the environment."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from libmgsave import console
from libmgsave.history import HostShutdown
from libmgsave.state import StateDir


@dataclass
class Context:
    command: str
    policy_path: str
    policy_explicit: bool  # named by --policy or $MGSAVE_POLICY: then it must exist
    state: StateDir
    connect: tuple[str, ...] = ()  # --connect: these URIs instead of the policy's connections
    default_uri: str | None = None  # $LIBVIRT_DEFAULT_URI: instead of the built-in connection, as virsh
    json: bool = False
    debug: bool = False
    trust_insecure: bool = False  # --insecure-policy
    which: str | None = None  # plan: one pass only
    guests: tuple[str, ...] = ()  # plan: only these guests (by name), in full
    verbose: bool = False  # plan: every guest in full, with where each setting came from
    dry_run: bool = False
    wait: float | None = None  # how long to wait for the pass lock; None: the command's default
    deadline: float | None = None  # shutdown: overrides limits.shutdown_deadline
    if_host_going_down: bool = False  # shutdown: the unit's stop; no pass on a host that stays up
    # plan, shutdown: the kind of shutdown (--reboot, --poweroff; the unit's stop: what systemd
    # and logind say), so each guest's chain; None: not known (on_shutdown)
    host_shutdown: HostShutdown | None = None
    strict: bool = False  # check: every warning is an error
    svg: str | None = None  # report: also draw the timeline into this file
    restore_unrecorded: bool = False  # boot: also restore transient guests' save files no record names
    images_command: str = "list"  # images: list or remove
    names: tuple[str, ...] = ()  # images remove: the kept files named
    remove_all: bool = False  # images remove --all
    # Filled in on the way, for the summary: problems met (untrusted records...), and whether
    # the lock or a record could not be had (the pass then exits 1 even if every guest is fine).
    warnings: list[str] = field(default_factory=list)
    bookkeeping_failed: bool = False

    def emit(self, data: dict, text: str) -> None:
        """Print the command's output: ``data`` as JSON with --json, else ``text``."""
        if self.json:
            # One string, one write: json.dump would write every token on its own (560,000
            # writes for 10,000 guests' status).
            console.out(json.dumps(data, indent=2, default=str))
        else:
            console.out(text)
