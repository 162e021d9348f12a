"""The boot plan: which guests to start, resume, restore or leave off, from the last shutdown record."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from libmgsave.channels import UNKNOWN, ChannelSupport, choose
from libmgsave.history import GuestEntry, Outcome, RecordedPass, guest_record_key
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.matching import Effective, resolve
from libmgsave.plan.model import Action, GuestKey, GuestPlan, PassKind, Plan, rule_lines
from libmgsave.plan.ordering import dependencies, effective_orders
from libmgsave.plan.peers import PeerGuest
from libmgsave.policy import Autostart, OnResumeFailure, Policy
from libmgsave.restorable import Restorability, Verdict
from libmgsave.saveimages import managed_image_path


def recorded_peer(entry: GuestEntry | None) -> str | None:
    """The peer a shutdown record's entry places its guest on (the pass migrated it there), or None."""
    return entry.migrated_to if entry else None


def peer_questions(guests: Iterable[GuestInfo], policy: Policy, record: RecordedPass | None) -> dict[str, list[str]]:
    """What the boot plan must ask which peer first (peer URI -> UUIDs): the guests the record
    places on a peer that are defined here again and not running. Started here, they would run
    twice on one disk if they still run there. Only a peer the guest's policy lists is asked."""
    recorded = {} if record is None else record.guests
    questions: dict[str, list[str]] = {}
    for guest in guests:
        peer = recorded_peer(recorded.get(guest_record_key(*guest.key)))
        if peer and not guest.state.is_active and peer in resolve(policy, guest).settings.migrate.peers:
            questions.setdefault(peer, []).append(guest.uuid)
    return questions


def recorded_guest(entry: GuestEntry, persistent: bool = False) -> GuestInfo:
    """A transient guest exists only in the record between shutdown and boot, a migrated one only
    on its peer: rebuild it."""
    return GuestInfo(
        connection=entry.connection,
        name=entry.name,
        uuid=entry.uuid,
        state=GuestState.SHUTOFF,
        persistent=persistent,
        memory_kib=int(entry.memory_kib or 0),
        title=entry.title or "",
        metadata=dict(entry.metadata or {}),
    )


Resolved = dict[GuestKey, tuple[GuestInfo, Effective]]


def plan_boot(
    guests: Iterable[GuestInfo], policy: Policy, record: RecordedPass | None, recovered: Iterable[GuestEntry] = (),
    *, booted_since: bool = False, used_images: Collection[str] = (),
    channels: Mapping[str, ChannelSupport] | None = None, cores: int | None = None,
    on_peers: Mapping[tuple[str, str], PeerGuest] | None = None,
    resumes: Mapping[GuestKey, Restorability] | None = None,
) -> Plan:
    """Decide which guests to start, resume or leave off, in start order.

    ``record`` is the last shutdown record, or None when there is none to trust: then a guest
    with a saved image counts as "was running" (libvirt only has one if it was saved running).
    ``recovered``: record-like entries for transient guests' save files found with no usable
    record (read back from the files themselves), restored like recorded ones.
    ``used_images``: record keys of transient guests whose save file a boot pass since the
    record restored; stale, it is never restored again. ``channels`` and ``cores``: as for
    ``plan_shutdown``, for reading sparse images back: transient guests' save files and
    persistent guests' managed-save images (``Guest.resume_with_channels``).
    ``on_peers``: what the peers said of the guests ``peer_questions`` names, by (peer, UUID).
    ``resumes``: whether each held image resumes on the hypervisor installed now
    (``restorable.judge``); a guest whose image will not is planned so: never tried.
    """
    warnings: list[str] = []
    if record is None:
        warnings.append("no usable shutdown record: 'if-running' guests are started when they have a saved image")
    recorded = {} if record is None else dict(record.guests)
    resolved: Resolved = {guest.key: (guest, resolve(policy, guest)) for guest in guests}
    files = _save_files_to_restore([*recorded.values(), *recovered], policy, resolved, used_images, warnings)
    on_peer = _on_peers_not_here(recorded.values(), policy, resolved)
    deps = dependencies(resolved, warnings)
    orders = effective_orders(resolved, deps)
    facts = _BootFacts(recorded, record is not None, files, on_peer, on_peers or {}, booted_since,
                       dict(channels or {}), min(policy.limits.max_parallel_starts, len(files)) or 1,
                       cores or os.cpu_count() or 1, resumes or {})
    entries = []
    for key in sorted(resolved, key=lambda k: (orders[k], -resolved[k][1].settings.priority, resolved[k][0].name,
                                               resolved[k][0].connection)):
        wait_for = tuple(d for d in deps[key] if orders[d] == orders[key])
        entries.append(_boot_entry(facts, *resolved[key], orders[key], wait_for))
    return Plan(PassKind.BOOT, tuple(entries), policy.limits, policy.source, tuple(warnings),
                rule_lines=rule_lines(policy))


def _save_files_to_restore(entries: Iterable[GuestEntry], policy: Policy, resolved: Resolved,
                           used_images: Collection[str], warnings: list[str]) -> dict[GuestKey, str]:
    """The transient guests saved to a file (added to ``resolved``), and their files; a file a
    boot pass since restored is stale and never restored again."""
    files: dict[GuestKey, str] = {}
    for entry in entries:
        if entry.outcome is Outcome.SAVED_TO_FILE and entry.image:
            guest = recorded_guest(entry)
            if entry.key in used_images:
                warnings.append(f"{guest.name}: its save file {entry.image} was restored by an earlier boot pass "
                                f"and is stale; not restored again")
                continue
            if guest.key not in resolved:
                resolved[guest.key] = (guest, resolve(policy, guest))
                files[guest.key] = entry.image
    return files


def _on_peers_not_here(entries: Iterable[GuestEntry], policy: Policy, resolved: Resolved) -> dict[GuestKey, str]:
    """The guests the last shutdown migrated and that are not defined here again (added to
    ``resolved``), and their peers."""
    on_peer: dict[GuestKey, str] = {}
    for entry in entries:
        # only home to a connection this pass has: the guest is started through it afterwards
        if entry.migrated_to and entry.connection in policy.connections:
            guest = recorded_guest(entry, persistent=True)
            if guest.key not in resolved:
                resolved[guest.key] = (guest, resolve(policy, guest))
                on_peer[guest.key] = entry.migrated_to
    return on_peer


@dataclass(frozen=True)
class _BootFacts:
    """What the boot plan knows besides the guest: the record, the files, the peers, the channels."""

    recorded: Mapping[str, GuestEntry]
    have_record: bool
    files: Mapping[GuestKey, str]  # transient guests' save files to restore
    on_peer: Mapping[GuestKey, str]  # guests on their peer, not defined here
    on_peers: Mapping[tuple[str, str], PeerGuest]  # what the peers said
    booted_since: bool
    offers: Mapping[str, ChannelSupport]
    at_once: int  # restores at once
    cores: int
    resumes: Mapping[GuestKey, Restorability]  # whether each held image resumes here now


def _boot_entry(facts: _BootFacts, guest: GuestInfo, eff: Effective, order: int,
                wait_for: tuple[GuestKey, ...]) -> GuestPlan:
    """One guest's boot plan."""
    key = guest.key
    entry = facts.recorded.get(guest_record_key(*key))
    if key in facts.on_peer:
        decided = _return_decision(eff, facts.on_peer[key])
    else:
        decided = _boot_decision(guest, eff, entry, facts.have_record, key in facts.files)
        if recorded_peer(entry) and decided.action in (Action.START, Action.RESUME):
            decided = _defined_here_again(eff, recorded_peer(entry), facts.on_peers, guest, decided)
    verdict = facts.resumes.get(key) if decided.action in (Action.RESUME, Action.RESTORE) else None
    if verdict is not None and verdict.verdict is Verdict.WILL_NOT_RESUME:
        decided = _will_not_resume(eff, decided, verdict)
    elif verdict is not None and verdict.verdict is Verdict.CHANGED:
        decided = dataclasses.replace(decided, notes=decided.notes + (verdict.why,))
    action = decided.action
    # After a first boot pass (``booted_since``) a guest of the record may simply have been
    # resumed and stopped again: starting it fresh is no news then.
    lost = _lost_state_note(entry) if action is Action.START and not facts.booted_since else None
    lost = decided.fresh or lost  # the warning of ``will_not_resume`` says it: no note of it
    if_fails = Action.START if eff.settings.on_resume_failure is OnResumeFailure.BOOT_FRESH else Action.SKIP
    read_with = 1
    # a sparse image (the executor reads its header) is read with channels, a managed one too
    # (``Guest.resume_with_channels``)
    if action is Action.RESTORE or (action is Action.RESUME and guest.persistent):
        read_with, _ = choose(eff.settings.save_channels, guest, facts.offers.get(guest.connection, UNKNOWN),
                              at_once=facts.at_once, cores=facts.cores)
    return GuestPlan(guest, eff, (action,), decided.reason, order, wait_for if action is not Action.SKIP else (),
                     image=facts.files.get(key), notes=((lost,) if lost and not decided.fresh else ()) + decided.notes,
                     managed_image=managed_image_path(guest.connection, guest.name) if guest.persistent else None,
                     boots_fresh_because=lost, if_resume_fails=if_fails, save_channels=read_with,
                     peer=decided.peer, on_peer=key in facts.on_peer, left_off_because=decided.held,
                     dropped_first_choice=decided.wanted, cause=decided.cause,
                     will_not_resume=_said(verdict, Verdict.WILL_NOT_RESUME),
                     changed_since_save=_said(verdict, Verdict.CHANGED))


def _said(verdict: Restorability | None, which: Verdict) -> str | None:
    """The words of ``verdict`` when it is ``which``, else None."""
    return verdict.text if verdict is not None and verdict.verdict is which else None


def _lost_state_note(entry: GuestEntry | None) -> str | None:
    """Why a guest about to be started fresh lost the memory state it had at the last shutdown,
    or None when nothing was lost (it was not running, or was shut down on purpose)."""
    outcome = entry.outcome if entry else None
    if outcome is Outcome.PENDING:
        return ("it was running at the last shutdown but was not saved (its record says 'pending': the pass "
                "was cut short, by a crash or a power loss): it boots fresh, its memory state is lost")
    if outcome is Outcome.INTERRUPTED:
        return ("it was running at the last shutdown but the shutdown pass was stopped (by a signal) before "
                "it reached it: it boots fresh, its memory state is lost")
    if outcome is Outcome.FAILED:
        return ("it was running at the last shutdown and every step of its shutdown chain failed (its "
                "record says 'failed'): it boots fresh, its memory state is lost")
    if outcome in (Outcome.SAVED, Outcome.SAVED_TO_FILE):
        return ("the last shutdown saved it, but there is no saved image for it any more (removed by "
                "someone?): it boots fresh, its memory state is lost")
    return None


@dataclass(frozen=True)
class _Decision:
    """What the boot plan gives one guest, and why: ``cause``, then (``then``) what that makes
    of it in words the ACTION column already says, so that the table can leave them out."""

    action: Action
    cause: str
    then: str = ""
    peer: str | None = None  # the peer it comes back from, or that the record places it on
    held: str | None = None  # why it is left off at a loss (``GuestPlan.left_off_because``)
    wanted: Action | None = None  # the start it would have had, when held
    notes: tuple[str, ...] = ()
    fresh: str | None = None  # why it boots fresh instead of resuming an image that will not resume

    @property
    def reason(self) -> str:
        return self.cause + self.then


def _return_decision(eff: Effective, peer: str) -> _Decision:
    """A guest the last shutdown migrated to ``peer``: it comes home when its policy says so. The
    peer is read from the record: only one the guest's policy lists is ever connected to."""
    if peer not in eff.settings.migrate.peers:
        return _Decision(Action.SKIP, f"migrated to {peer} at the last shutdown, a peer its policy does not list "
                                      f"(any more): not contacted", peer=peer)
    if eff.settings.migrate.come_back and eff.settings.migrate.home:
        return _Decision(Action.RETURN, f"migrated to {peer} at the last shutdown; comes back", peer=peer)
    return _Decision(Action.SKIP, f"migrated to {peer} at the last shutdown; runs there (come_back is off)", peer=peer)


def _will_not_resume(eff: Effective, wanted: _Decision, verdict: Restorability) -> _Decision:
    """A guest whose held image will not resume on this hypervisor (``wanted`` resumed it): not
    tried, but planned as its failed resume would end, its image kept. Boot-fresh boots a
    guest with a managed-save image fresh (its image set aside first); a transient guest has
    nothing to boot without its save file, which stays where it is."""
    why = f"its saved image {verdict.why}"
    if eff.settings.on_resume_failure is OnResumeFailure.BOOT_FRESH and wanted.action is Action.RESUME:
        fresh = f"{why}: it boots fresh (on_resume_failure: boot-fresh), its image kept; {verdict.advice}"
        return _Decision(Action.START, f"{wanted.cause}; {why}", "; boots fresh, its image kept", wanted=wanted.action,
                         notes=wanted.notes, fresh=fresh)
    how = "on_resume_failure: leave-off" if wanted.action is Action.RESUME else "a transient guest"
    held = f"{why}: left off ({how}), its image kept where it is; {verdict.advice}"
    return _Decision(Action.SKIP, f"{wanted.cause}; {why}", "; left off, its image kept", held=held,
                     wanted=wanted.action, notes=wanted.notes)


def _defined_here_again(eff: Effective, peer: str, on_peers: Mapping[tuple[str, str], PeerGuest], guest: GuestInfo,
                        wanted: _Decision) -> _Decision:
    """A guest the record places on ``peer`` that is defined here again and would be started
    (``wanted``): the daemon died in the migration's last step, or configuration management
    defined it again. Two copies on one disk corrupt it: it is started here only when the peer
    says it does not live there; left off at a loss when the peer could not be asked."""
    there = on_peers.get((peer, guest.uuid))
    if there is None or not there.answered:
        why = (f"not asked: its policy does not list {peer} (any more)" if peer not in eff.settings.migrate.peers
               else f"{peer} could not be asked ({there.why if there else 'not asked'})")
        held = f"recorded as migrated to {peer}, but defined here again: {why}; not started here, in case it runs there"
        return _Decision(Action.SKIP, held, peer=peer, held=held, wanted=wanted.action)
    if there.lives_there:
        where = f"defined here again, but it lives on {peer} ({there.state})"
        if eff.settings.migrate.come_back and eff.settings.migrate.home:
            return _Decision(Action.RETURN, f"{where}; comes back", peer=peer)
        return _Decision(Action.SKIP, f"{where}: not started here (come_back is off)", peer=peer)
    return dataclasses.replace(wanted, peer=peer, notes=(f"recorded as migrated to {peer}, which says it does not run "
                                                         f"there ({there.state}): it starts here",))


def _boot_decision(guest: GuestInfo, eff: Effective, entry: GuestEntry | None, have_record: bool,
                   from_file: bool) -> _Decision:
    autostart = eff.settings.autostart
    has_image = guest.has_managed_save or from_file
    resume = Action.RESTORE if from_file else Action.RESUME
    if guest.state.is_active:
        return _Decision(Action.SKIP, f"already {guest.state}")
    if autostart is Autostart.NEVER:
        kept = "; its saved state is kept for a manual start" if has_image else ""
        return _Decision(Action.SKIP, f"autostart never{kept}")
    if autostart is Autostart.ALWAYS:
        if has_image:
            return _Decision(resume, "autostart always", "; resumes its saved state")
        return _Decision(Action.START, "autostart always; no saved state", ", boots fresh")
    # if-running
    if have_record:
        if entry is None:
            kept = " (it has a saved image, kept)" if has_image else ""
            return _Decision(Action.SKIP, f"if-running: was not running at the last shutdown{kept}")
        was = f"if-running: was running at the last shutdown ({entry.outcome})"
        return _Decision(resume, was, "; resumes") if has_image else _Decision(Action.START, was, "; boots fresh")
    if has_image:
        return _Decision(resume, "if-running: has a saved image, so it was running when saved", "; resumes")
    return _Decision(Action.SKIP, "if-running: no record and no saved image")
