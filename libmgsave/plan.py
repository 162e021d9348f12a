"""Planning: guests + policy (+ the last shutdown record) in, decisions out. Pure.

Nothing here talks to libvirt or the disk. The plan is computed once, as data; ``mgsave plan``
and ``--dry-run`` print it and the real pass executes exactly it, so what an admin sees is
what happens.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from libmgsave.saveimages import managed_image_path
from libmgsave.state import StateDir
from libmgsave.state.records import guest_record_key
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.matching import Effective, resolve
from libmgsave.outcomes import Outcome
from libmgsave.policy import Autostart, Limits, OnResumeFailure, Policy, ShutdownStep
from libmgsave.policyfile.settings import setting_to_json

# Aggregate save throughput assumed before any pass has measured one on this host. Saving is
# CPU-bound (QEMU and libvirt's I/O helper); 200 MB/s is below what a 2-core host reached.
DEFAULT_SAVE_THROUGHPUT = 200e6
# Time kept back at the end of the shutdown deadline for the last fallback step (a poweroff).
DEADLINE_RESERVE = 10.0

GuestKey = tuple[str, str]  # (connection URI, UUID)
FILES_ROOM = "<state directory>"  # key of ``room`` for transient guests' save files


class PassKind(enum.StrEnum):
    SHUTDOWN = "shutdown"
    BOOT = "boot"


class Action(enum.StrEnum):
    SAVE = "save"  # managed save
    SAVE_TO_FILE = "save-to-file"  # transient guest: save to images/<uuid>.save
    SHUTDOWN = "shutdown"
    POWEROFF = "poweroff"
    RESUME = "resume"  # start from the managed-save image
    RESTORE = "restore"  # recreate a transient guest from its save file
    START = "start"  # cold boot
    SKIP = "skip"


@dataclass(frozen=True)
class GuestPlan:
    """What happens to one guest in one pass, and why."""

    guest: GuestInfo
    effective: Effective
    actions: tuple[Action, ...]  # shutdown: the fallback chain; boot: one action; (SKIP,) = nothing
    reason: str
    order: int = 0  # effective order, after ``after`` has pulled a guest behind its dependencies
    wait_for: tuple[GuestKey, ...] = ()  # guests that must finish first
    estimate_seconds: float | None = None  # shutdown: estimated end of this guest's save, from pass start
    image: str | None = None  # save file of a transient guest
    notes: tuple[str, ...] = ()
    # Where libvirt keeps the guest's managed-save image, when that is known (local QEMU): the
    # save writes it, the resume reads it, a failed resume keeps it.
    managed_image: str | None = None
    # shutdown: why its save was dropped from the chain up front (deadline, room), or None
    save_dropped_because: str | None = None
    # boot: why a cold boot it gets is news (it was running at the last shutdown but its memory
    # state was not saved), or None; and what to do when its resume fails (START: boot it fresh,
    # SKIP: leave it off)
    boots_fresh_because: str | None = None
    if_resume_fails: Action = Action.SKIP

    @property
    def key(self) -> GuestKey:
        return self.guest.key

    @property
    def skipped(self) -> bool:
        return self.actions == (Action.SKIP,)

    def to_dict(self) -> dict:
        return {
            "connection": self.guest.connection,
            "name": self.guest.name,
            "uuid": self.guest.uuid,
            "state": str(self.guest.state),
            "persistent": self.guest.persistent,
            "has_saved_image": self.guest.has_managed_save,
            "memory_bytes": self.guest.memory_bytes,
            "actions": [str(a) for a in self.actions],
            "reason": self.reason,
            "order": self.order,
            "wait_for": [f"{c} {u}" for c, u in self.wait_for],
            "estimate_seconds": self.estimate_seconds,
            "image": self.image,
            "managed_image": self.managed_image,
            "notes": list(self.notes),
            "settings": _settings_dict(self.effective),
        }


@dataclass(frozen=True)
class Plan:
    kind: PassKind
    entries: tuple[GuestPlan, ...]  # in execution order
    limits: Limits
    policy_source: str | None
    warnings: tuple[str, ...] = ()
    throughput: float | None = None  # shutdown: assumed aggregate save throughput, bytes/s

    @property
    def active(self) -> tuple[GuestPlan, ...]:
        return tuple(e for e in self.entries if not e.skipped)

    def to_dict(self) -> dict:
        return {
            "pass": str(self.kind),
            "policy": self.policy_source or "built-in defaults",
            "limits": {
                "max_parallel_saves": self.limits.max_parallel_saves,
                "max_parallel_starts": self.limits.max_parallel_starts,
                "shutdown_deadline": self.limits.shutdown_deadline,
                "start_delay": self.limits.start_delay,
            },
            "assumed_save_throughput": self.throughput,
            "warnings": list(self.warnings),
            "guests": [e.to_dict() for e in self.entries],
        }


def _settings_dict(effective: Effective) -> dict:
    return {name: {"value": setting_to_json(getattr(effective.settings, name)), "from": source}
            for name, source in effective.sources.items()}


def _mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


# --- ordering -------------------------------------------------------------------------------


def dependency_warnings(guests: Iterable[GuestInfo], policy: Policy) -> list[str]:
    """What is wrong with the guests' ``after`` settings: names that match no guest, cycles."""
    warnings: list[str] = []
    _dependencies({g.key: (g, resolve(policy, g)) for g in guests}, warnings)
    return list(dict.fromkeys(warnings))


def _dependencies(
    resolved: Mapping[GuestKey, tuple[GuestInfo, Effective]], warnings: list[str]
) -> dict[GuestKey, tuple[GuestKey, ...]]:
    """For each guest, the guests it is ``after`` (they must be up before it starts).

    A name is looked up on the guest's own connection first, then on any connection.
    Unknown names and cycles are warnings: a cycle's edges are dropped so that no guest is
    ever left waiting forever (at shutdown, an unsaved guest is a lost guest).
    """
    by_name: dict[str, list[GuestKey]] = {}
    for key, (guest, _eff) in resolved.items():
        by_name.setdefault(guest.name, []).append(key)
    deps: dict[GuestKey, tuple[GuestKey, ...]] = {}
    for key, (guest, eff) in resolved.items():
        found = []
        for name in eff.settings.after:
            candidates = by_name.get(name, [])
            same_connection = [k for k in candidates if k[0] == guest.connection]
            chosen = same_connection or candidates
            if not chosen:
                warnings.append(f"{guest.name}: 'after' names {name!r}, which is not a guest here; ignored")
            elif chosen[0] == key:
                warnings.append(f"{guest.name}: 'after' names the guest itself; ignored")
            else:
                found.append(chosen[0])
        deps[key] = tuple(found)
    _break_cycles(deps, resolved, warnings)
    return deps


def _break_cycles(
    deps: dict[GuestKey, tuple[GuestKey, ...]],
    resolved: Mapping[GuestKey, tuple[GuestInfo, Effective]],
    warnings: list[str],
) -> None:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(deps, WHITE)
    for root in deps:
        if colour[root] != WHITE:
            continue
        stack = [(root, iter(deps[root]))]
        colour[root] = GREY
        path = [root]
        while stack:
            node, children = stack[-1]
            for child in children:
                if colour[child] == GREY:
                    cycle = path[path.index(child):] + [child]
                    names = " -> ".join(resolved[k][0].name for k in cycle)
                    warnings.append(
                        f"'after' forms a cycle ({names}); ignoring "
                        f"'{resolved[node][0].name} after {resolved[child][0].name}'"
                    )
                    deps[node] = tuple(d for d in deps[node] if d != child)
                elif colour[child] == WHITE:
                    colour[child] = GREY
                    stack.append((child, iter(deps[child])))
                    path.append(child)
                    break
            else:
                colour[node] = BLACK
                stack.pop()
                path.pop()


def _effective_orders(
    resolved: Mapping[GuestKey, tuple[GuestInfo, Effective]], deps: Mapping[GuestKey, tuple[GuestKey, ...]]
) -> dict[GuestKey, int]:
    """A guest starts no earlier than the order group of anything it is ``after``.

    Without this, "x (order 0) after y (order 10)" would wait for a group that waits for it.
    """
    memo: dict[GuestKey, int] = {}

    def order_of(key: GuestKey) -> int:
        if key in memo:
            return memo[key]
        memo[key] = resolved[key][1].settings.order  # provisional; deps are acyclic now
        memo[key] = max([resolved[key][1].settings.order] + [order_of(d) for d in deps[key]])
        return memo[key]

    return {key: order_of(key) for key in resolved}


# --- shutdown -------------------------------------------------------------------------------


def plan_shutdown(
    guests: Iterable[GuestInfo],
    policy: Policy,
    *,
    state_dir: Path,
    throughput: float | None = None,
    deadline: float | None = None,
    room: Mapping[str, int | None] | None = None,
) -> Plan:
    """Decide the fallback chain of every running guest, in the order the pass will work.

    Guests stop in descending ``order``; a guest stops before anything it is ``after``.
    Under the deadline, saves are estimated from guest memory and ``throughput`` (aggregate
    bytes/s); a save that would end after the deadline is dropped from the chain up front, so
    the guest goes to its next step at once instead of being cut off mid-save.

    ``room`` gives the free bytes where images go: per connection URI for managed saves, and
    under ``FILES_ROOM`` for transient guests' files (None or absent: unknown, not checked).
    A save whose image (estimated as the guest's memory size, an upper bound) does not fit
    what is left is dropped from the chain the same way.
    """
    room_left = dict(room or {})
    throughput = throughput or DEFAULT_SAVE_THROUGHPUT
    deadline = policy.limits.shutdown_deadline if deadline is None else deadline
    warnings: list[str] = []
    resolved = {g.key: (g, resolve(policy, g)) for g in guests}
    deps = _dependencies(resolved, warnings)
    orders = _effective_orders(resolved, deps)

    # Stop dependents before what they depend on: invert the edges among active guests.
    stop_first: dict[GuestKey, list[GuestKey]] = {k: [] for k in resolved}
    for key, needs in deps.items():
        if resolved[key][0].state.is_active:
            for needed in needs:
                if orders[needed] == orders[key]:
                    stop_first[needed].append(key)

    def sort_key(key: GuestKey):
        guest, eff = resolved[key]
        return (-orders[key], -eff.settings.priority, guest.name, guest.connection)

    entries = []
    budget = _SaveBudget(throughput, deadline, room_left)
    for key in sorted(resolved, key=sort_key):
        guest, eff = resolved[key]
        if not guest.state.is_active:
            reason = f"{guest.state}: nothing to do"
            entries.append(GuestPlan(guest, eff, (Action.SKIP,), reason, orders[key]))
            continue
        entries.append(_shutdown_entry(guest, eff, orders[key], tuple(sorted(stop_first[key])), state_dir, budget))
    return Plan(PassKind.SHUTDOWN, tuple(entries), policy.limits, policy.source, tuple(warnings), throughput)


class _SaveBudget:
    """What is left of the deadline and of the free space as saves are planned, in plan order."""

    def __init__(self, throughput: float, deadline: float, room: dict[str, int | None]):
        self.throughput = throughput
        self.deadline = deadline
        self.seconds = deadline - DEADLINE_RESERVE
        self.room = room
        self.saved_bytes = 0.0

    def take(self, guest: GuestInfo, room_key: str) -> tuple[float | None, str | None]:
        """The estimated end of the guest's save, or why it must be dropped from the chain."""
        estimate = (self.saved_bytes + guest.memory_bytes) / self.throughput
        free = self.room.get(room_key)
        if estimate > self.seconds:
            return None, (f"save skipped: it would end about {estimate:.0f} s into the pass, past the "
                          f"{self.deadline:.0f} s deadline")
        if free is not None and guest.memory_bytes > free:
            return None, f"save skipped: its image may need {_mb(guest.memory_bytes)}, only {_mb(free)} free"
        self.saved_bytes += guest.memory_bytes
        if free is not None:
            self.room[room_key] = free - guest.memory_bytes
        return estimate, None


def _shutdown_entry(guest: GuestInfo, eff: Effective, order: int, wait_for: tuple[GuestKey, ...],
                    state_dir: Path, budget: _SaveBudget) -> GuestPlan:
    """A running guest's fallback chain, its save dropped up front when it cannot make it."""
    notes: list[str] = []
    chain = []
    image = managed = None
    for step in eff.settings.on_shutdown:
        if step is ShutdownStep.SAVE:
            chain.append(Action.SAVE if guest.persistent else Action.SAVE_TO_FILE)
            if guest.persistent:
                managed = managed_image_path(guest.connection, guest.name)
            else:
                image = StateDir(state_dir).transient_image(guest.uuid)
                notes.append("transient guest: saved to a file, restored from it at boot")
        else:
            chain.append(Action(step.value))
    estimate = dropped = None
    if chain[0] in (Action.SAVE, Action.SAVE_TO_FILE) and len(chain) > 1:
        estimate, dropped = budget.take(guest, guest.connection if chain[0] is Action.SAVE else FILES_ROOM)
        if dropped:
            notes.append(dropped)
            chain, image, managed = chain[1:], None, None
    reason = f"{guest.state}; chain {' -> '.join(chain)}"
    return GuestPlan(guest, eff, tuple(chain), reason, order, wait_for, estimate, image, tuple(notes),
                     managed_image=managed, save_dropped_because=dropped)


# --- boot -----------------------------------------------------------------------------------


def _recorded_guest(entry: Mapping) -> GuestInfo:
    """A transient guest exists only in the record between shutdown and boot: rebuild it."""
    return GuestInfo(
        connection=entry["connection"],
        name=entry["name"],
        uuid=entry["uuid"],
        state=GuestState.SHUTOFF,
        persistent=False,
        memory_kib=int(entry.get("memory_kib") or 0),
        title=entry.get("title") or "",
        metadata=dict(entry.get("metadata") or {}),
    )


def plan_boot(
    guests: Iterable[GuestInfo], policy: Policy, record: Mapping | None, recovered: Iterable[Mapping] = (),
    *, booted_since: bool = False,
) -> Plan:
    """Decide which guests to start, resume or leave off, in start order.

    ``record`` is the last shutdown record, or None when there is none to trust: then a guest
    with a saved image counts as "was running" (libvirt only has one if it was saved running).
    """
    warnings: list[str] = []
    recorded = {} if record is None else dict(record.get("guests", {}))
    if record is None:
        warnings.append("no usable shutdown record: 'if-running' guests are started when they have a saved image")
    resolved: dict[GuestKey, tuple[GuestInfo, Effective]] = {}
    for guest in guests:
        resolved[guest.key] = (guest, resolve(policy, guest))
    transient_images: dict[GuestKey, str] = {}
    # ``recovered``: record-like entries for transient guests' save files found with no usable
    # record (read back from the files themselves), restored like recorded ones.
    for entry in [*recorded.values(), *recovered]:
        if entry.get("outcome") == Outcome.SAVED_TO_FILE and entry.get("image"):
            guest = _recorded_guest(entry)
            if guest.key not in resolved:
                resolved[guest.key] = (guest, resolve(policy, guest))
                transient_images[guest.key] = entry["image"]
    deps = _dependencies(resolved, warnings)
    orders = _effective_orders(resolved, deps)

    def sort_key(key: GuestKey):
        guest, eff = resolved[key]
        return (orders[key], -eff.settings.priority, guest.name, guest.connection)

    entries = []
    for key in sorted(resolved, key=sort_key):
        guest, eff = resolved[key]
        entry = recorded.get(guest_record_key(*key))
        action, reason = _boot_decision(guest, eff, entry, record is not None, key in transient_images)
        wait_for = tuple(d for d in deps[key] if orders[d] == orders[key])
        # After a first boot pass (``booted_since``) a guest of the record may simply have been
        # resumed and stopped again: starting it fresh is no news then.
        lost = _lost_state_note(entry) if action is Action.START and not booted_since else None
        if_fails = Action.START if eff.settings.on_resume_failure is OnResumeFailure.BOOT_FRESH else Action.SKIP
        entries.append(
            GuestPlan(guest, eff, (action,), reason, orders[key], wait_for if action is not Action.SKIP else (),
                      image=transient_images.get(key), notes=(lost,) if lost else (),
                      managed_image=managed_image_path(guest.connection, guest.name) if guest.persistent else None,
                      boots_fresh_because=lost, if_resume_fails=if_fails)
        )
    return Plan(PassKind.BOOT, tuple(entries), policy.limits, policy.source, tuple(warnings))


def _lost_state_note(entry: Mapping | None) -> str | None:
    """Why a guest about to be started fresh lost the memory state it had at the last shutdown,
    or None when nothing was lost (it was not running, or was shut down on purpose)."""
    outcome = entry.get("outcome") if entry else None
    if outcome == Outcome.PENDING:
        return ("it was running at the last shutdown but was not saved (its record says 'pending': the pass "
                "was cut short, by a crash or a power loss): it boots fresh, its memory state is lost")
    if outcome == Outcome.INTERRUPTED:
        return ("it was running at the last shutdown but the shutdown pass was stopped (by a signal) before "
                "it reached it: it boots fresh, its memory state is lost")
    if outcome == Outcome.FAILED:
        return ("it was running at the last shutdown and every step of its shutdown chain failed (its "
                "record says 'failed'): it boots fresh, its memory state is lost")
    if outcome in (Outcome.SAVED, Outcome.SAVED_TO_FILE):
        return ("the last shutdown saved it, but there is no saved image for it any more (removed by "
                "someone?): it boots fresh, its memory state is lost")
    return None


def _boot_decision(
    guest: GuestInfo, eff: Effective, entry: Mapping | None, have_record: bool, from_file: bool
) -> tuple[Action, str]:
    autostart = eff.settings.autostart
    has_image = guest.has_managed_save or from_file
    resume = Action.RESTORE if from_file else Action.RESUME
    if guest.state.is_active:
        return Action.SKIP, f"already {guest.state}"
    if autostart is Autostart.NEVER:
        kept = "; its saved state is kept for a manual start" if has_image else ""
        return Action.SKIP, f"autostart never{kept}"
    if autostart is Autostart.ALWAYS:
        if has_image:
            return resume, "autostart always; resumes its saved state"
        return Action.START, "autostart always; no saved state, boots fresh"
    # if-running
    if have_record:
        if entry is None:
            kept = " (it has a saved image, kept)" if has_image else ""
            return Action.SKIP, f"if-running: was not running at the last shutdown{kept}"
        if has_image:
            return resume, f"if-running: was running at the last shutdown ({entry.get('outcome')}); resumes"
        return Action.START, f"if-running: was running at the last shutdown ({entry.get('outcome')}); boots fresh"
    if has_image:
        return resume, "if-running: has a saved image, so it was running when saved; resumes"
    return Action.SKIP, "if-running: no record and no saved image"
