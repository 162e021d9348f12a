"""The shutdown plan: each running guest's fallback chain, its save dropped up front when the
deadline or the free space cannot take it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from libmgsave import imageformat, units
from libmgsave.budget import for_steps
from libmgsave.channels import UNKNOWN, ChannelSupport, choose
from libmgsave.history import HostShutdown, ShutdownKind
from libmgsave.imageformat import FormatChoice
from libmgsave.inventory import GuestInfo
from libmgsave.matching import Effective, resolve
from libmgsave.plan.model import (DEADLINE_RESERVE, DEFAULT_SAVE_THROUGHPUT, FILES_ROOM, Action, GuestKey, GuestPlan,
                                  PassKind, Plan, SaveRate, rule_lines)
from libmgsave.plan.ordering import dependencies, effective_orders
from libmgsave.plan.peers import PeerBudget, PeerFacts
from libmgsave.policy import Policy, ShutdownStep
from libmgsave.saveimages import managed_image_path, transient_image_path


def plan_shutdown(
    guests: Iterable[GuestInfo],
    policy: Policy,
    *,
    state_dir: Path,
    rates: Mapping[str, SaveRate] | None = None,
    deadline: float | None = None,
    room: Mapping[str, int | None] | None = None,
    channels: Mapping[str, ChannelSupport] | None = None,
    cores: int | None = None,
    peers: Mapping[str, PeerFacts] | None = None,
    source_types: Mapping[str, str | None] | None = None,
    host_shutdown: HostShutdown | None = None,
) -> Plan:
    """Decide the fallback chain of every running guest, in the order the pass will work.

    Guests stop in descending ``order``; a guest stops before anything it is ``after``.
    Under the deadline, saves are estimated from guest memory and ``rates`` (each connection's
    aggregate bytes/s, as the last pass measured it; the built-in default where none is given):
    a save that would end after the deadline is dropped from the chain up front, so
    the guest goes to its next step at once instead of being cut off mid-save.

    ``room`` gives the free bytes where images go: per connection URI for managed saves, and
    under ``FILES_ROOM`` for transient guests' files (None or absent: unknown, not checked).
    A save whose image (estimated as the guest's memory size, an upper bound) does not fit
    what is left is dropped from the chain the same way.

    ``channels`` says which connections can save with parallel channels (absent: none can);
    ``cores`` (the host's CPUs, by default this machine's) is shared among the saves that run
    at once by ``save_channels: auto``.
    ``peers`` says what each peer URI of the guests' ``migrate`` settings answered, and
    ``source_types`` each connection's hypervisor type: a ``migrate`` step gets its peer here
    (``plan.peers.PeerBudget``), or is dropped from the chain when no peer can take the guest
    in time.
    ``host_shutdown`` is the kind of shutdown (None: not known): at a reboot, kexec or soft-reboot
    each guest gets its ``on_reboot`` chain, else (an unknown kind too) its ``on_shutdown`` chain.
    """
    guests = list(guests)
    host_shutdown = host_shutdown or UNKNOWN_KIND
    rates = {g.connection: SaveRate(DEFAULT_SAVE_THROUGHPUT, "built-in default") for g in guests} | dict(rates or {})
    deadline = policy.limits.shutdown_deadline if deadline is None else deadline
    warnings: list[str] = []
    resolved = {g.key: (g, resolve(policy, g)) for g in guests}
    warnings += _kind_warnings(host_shutdown, resolved.values())
    deps = dependencies(resolved, warnings)
    orders = effective_orders(resolved, deps)
    stop_first = _stop_first(resolved, deps, orders)
    budget = _SaveBudget(rates, deadline, dict(room or {}))
    kind = host_shutdown.kind
    share = _channel_share(resolved.values(), kind, policy, channels, cores)
    peer_budget = PeerBudget(peers or {}, source_types or {}, for_steps(deadline))
    state_dir = Path(state_dir)  # once, not per guest: 10,000 Path objects took a fifth of the plan
    entries = [_entry(resolved[key], orders[key], tuple(sorted(stop_first[key])), state_dir, budget, share,
                      peer_budget, kind)
               for key in sorted(resolved, key=lambda k: (-orders[k], -resolved[k][1].settings.priority,
                                                          resolved[k][0].name, resolved[k][0].connection))]
    return Plan(PassKind.SHUTDOWN, tuple(entries), policy.limits, policy.source, tuple(warnings), rates,
                peers=dict(peers or {}), deadline=deadline, rule_lines=rule_lines(policy),
                host_shutdown=host_shutdown)


UNKNOWN_KIND = HostShutdown(ShutdownKind.UNKNOWN, "no kind of shutdown was given")


def _channel_share(resolved: Iterable[tuple[GuestInfo, Effective]], kind: ShutdownKind, policy: Policy,
                   channels: Mapping[str, ChannelSupport] | None, cores: int | None) -> _ChannelShare:
    """How the host's cores are shared among the saves that run at once (``save_channels: auto``)."""
    saving = sum(1 for g, eff in resolved if g.state.is_active and ShutdownStep.SAVE in eff.settings.chain_for(kind))
    # none saving: nobody asks choose, which takes at least one at once anyway
    return _ChannelShare(dict(channels or {}), min(policy.limits.max_parallel_saves, saving),
                         cores or os.cpu_count() or 1)


def _entry(resolved: tuple[GuestInfo, Effective], order: int, stop_first: tuple, state_dir: Path,
           budget: _SaveBudget, share: _ChannelShare, peer_budget: PeerBudget, kind: ShutdownKind) -> GuestPlan:
    """One guest's entry: nothing to do for a guest that does not run, else its chain."""
    guest, eff = resolved
    if not guest.state.is_active:
        return GuestPlan(guest, eff, (Action.SKIP,), f"{guest.state}: nothing to do", order)
    return _shutdown_entry(guest, eff, order, stop_first, state_dir, budget, share, peer_budget, kind)


def _kind_warnings(host_shutdown: HostShutdown, resolved: Iterable[tuple[GuestInfo, Effective]]) -> list[str]:
    """When the kind of shutdown is not known, the running guests with an ``on_reboot`` chain of
    their own get their ``on_shutdown`` chain: say so, once, naming them."""
    if host_shutdown.kind is not ShutdownKind.UNKNOWN:
        return []
    names = sorted(g.name for g, eff in resolved
                   if g.state.is_active and eff.settings.chain_setting(ShutdownKind.REBOOT) == "on_reboot")
    if not names:
        return []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    get, their = ("gets", "its") if len(names) == 1 else ("get", "their")
    return [f"the kind of shutdown is not known ({host_shutdown.why}): {shown} {get} {their} on_shutdown chain, "
            f"not {their} on_reboot chain"]


def _stop_first(resolved: Mapping[GuestKey, tuple], deps: Mapping[GuestKey, Iterable[GuestKey]],
                orders: Mapping[GuestKey, int]) -> dict[GuestKey, list[GuestKey]]:
    """The guests that must stop before each one: its dependents in its own order group (the
    edges among active guests, inverted: dependents stop before what they depend on)."""
    stop_first: dict[GuestKey, list[GuestKey]] = {k: [] for k in resolved}
    for key, needs in deps.items():
        if resolved[key][0].state.is_active:
            for needed in needs:
                if orders[needed] == orders[key]:
                    stop_first[needed].append(key)
    return stop_first


_ACTION_OF = {step: Action(step.value) for step in ShutdownStep if step is not ShutdownStep.SAVE}


class _SaveBudget:
    """What is left of the deadline and of the free space as saves are planned, in plan order.
    Each connection saves at its own rate, measured while the others saved too: the bytes
    planned before a guest are those of its own connection."""

    def __init__(self, rates: Mapping[str, SaveRate], deadline: float, room: dict[str, int | None]):
        self.rates = rates
        self.seconds = for_steps(deadline)
        self.room = room
        self.saved_bytes: dict[str, float] = {}
        # The same spelling as the plan's header; the reserve is why 54 s can be too late for 60 s.
        # Spelt once: with thousands of guests most saves may be dropped.
        self.past_deadline = (f"past the {units.seconds(deadline)} deadline less the "
                              f"{units.seconds(DEADLINE_RESERVE)} kept for the fallback steps")

    def take(self, guest: GuestInfo, room_key: str) -> tuple[float | None, str | None]:
        """The estimated end of the guest's save, or why it must be dropped from the chain."""
        before = self.saved_bytes.get(guest.connection, 0.0)
        estimate = (before + guest.memory_bytes) / self.rates[guest.connection].bytes_per_second
        free = self.room.get(room_key)
        if estimate > self.seconds:
            return None, f"save skipped: it would end about {units.seconds(estimate)} into the pass, {self.past_deadline}"
        if free is not None and guest.memory_bytes > free:
            return None, f"save skipped: its image may need {_mb(guest.memory_bytes)}, only {_mb(free)} free"
        self.saved_bytes[guest.connection] = before + guest.memory_bytes
        if free is not None:
            self.room[room_key] = free - guest.memory_bytes
        return estimate, None


class _ChannelShare:
    """What ``channels.choose`` needs besides the guest: each connection's offer, how many saves
    run at once, and the host's cores."""

    def __init__(self, offers: dict[str, ChannelSupport], at_once: int, cores: int):
        self.offers, self.at_once, self.cores = offers, at_once, cores

    def choose(self, guest: GuestInfo, eff: Effective) -> tuple[FormatChoice, tuple[str, ...]]:
        """The save's channels and format, and the notes on what it gets less of than asked."""
        offered = self.offers.get(guest.connection, UNKNOWN)
        channels, refused = choose(eff.settings.save_channels, guest, offered, at_once=self.at_once, cores=self.cores)
        made = imageformat.choose(eff.settings.image_format, channels, offered,
                                  source=eff.sources.get("image_format", "built-in"))
        return made, tuple(n for n in (refused, made.note) if n)


def _shutdown_entry(guest: GuestInfo, eff: Effective, order: int, wait_for: tuple[GuestKey, ...],
                    state_dir: Path, budget: _SaveBudget, share: _ChannelShare, peer_budget: PeerBudget,
                    kind: ShutdownKind) -> GuestPlan:
    """A running guest's fallback chain, its save dropped up front when it cannot make it."""
    notes: list[str] = []
    chain = []
    image = managed = None
    chain_from = eff.settings.chain_setting(kind)
    for step in eff.settings.chain_for(kind):
        if step is ShutdownStep.SAVE:
            chain.append(Action.SAVE if guest.persistent else Action.SAVE_TO_FILE)
            if guest.persistent:
                managed = managed_image_path(guest.connection, guest.name)
            else:
                image = str(transient_image_path(state_dir, guest.uuid))
                notes.append("transient guest: saved to a file, restored from it at boot")
        else:
            chain.append(_ACTION_OF[step])
    estimate = dropped = peer = None
    first_choice = chain[0]
    migration_dropped = False
    if Action.MIGRATE in chain:
        choice = peer_budget.choose(guest, eff.settings.migrate)
        peer, estimate = choice.peer, choice.estimate
        if peer is None:  # the chain goes on with what follows the migration
            notes.append(choice.why)
            chain.remove(Action.MIGRATE)
            migration_dropped = first_choice is Action.MIGRATE
        else:
            notes.append(f"migrates to {peer}, estimated to end {units.seconds(estimate)} into the pass")
    head = chain[0] if chain else None
    # a save heads the chain as the policy's first choice, or because the migration before it was dropped
    if head in (Action.SAVE, Action.SAVE_TO_FILE) and len(chain) > 1 and (head is first_choice or migration_dropped):
        estimate, dropped = budget.take(guest, guest.connection if head is Action.SAVE else FILES_ROOM)
        if dropped:
            notes.append(dropped)
            chain, image, managed = chain[1:], None, None
    if not chain:  # the migration was the whole chain and cannot be carried out
        chain = [Action.SKIP]
    made = None
    if Action.SAVE in chain or Action.SAVE_TO_FILE in chain:
        made, refused = share.choose(guest, eff)
        notes += refused
    reason = f"{guest.state}; {chain_from} chain {' -> '.join(chain)}"
    return GuestPlan(guest, eff, tuple(chain), reason, order, wait_for, estimate, image, tuple(notes),
                     managed_image=managed, save_dropped_because=dropped,
                     dropped_first_choice=first_choice if dropped or migration_dropped else None,
                     save_channels=made.channels if made else 1, image_format=made.image_format if made else None,
                     image_format_why=made.why if made else None, peer=peer, chain_from=chain_from)


def _mb(n: float) -> str:
    return units.size(n)
