"""What the actions read before they decide anything: the policy, the guests, the records, the plans."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from libmgsave import units
from libmgsave.context import Context, PassLog
from libmgsave.diskspace import free_bytes, save_room
from libmgsave.errors import HypervisorError, PolicyError, Problem
from libmgsave.history import HostShutdown, RecordedPass
from libmgsave.hypervisor import Connections
from libmgsave.plan import FILES_ROOM, Plan
from libmgsave.policy import BUILTIN_POLICY, Policy, PolicyChoice, PolicyOrigin, copy_stamp
from libmgsave.state import policy_copy
from libmgsave.state.kept import kept_beside, kept_files, kept_usage, over_share_warning
from libmgsave.state.images import read_with_any, transient_images_without_record
from libmgsave.saveimages import save_file_is_complete
from libmgsave.state.carry_over import pending_files, settle_interrupted
from libmgsave.state.records import booted_since, guest_record_key, used_images
from libmgsave.state.throughput import learned_rates

if TYPE_CHECKING:
    from libmgsave.inventory import GuestInfo
    from libmgsave.policyfile import PassPolicyFile

log = logging.getLogger("mgsave")

# How long a pass keeps trying to reach a libvirt daemon that does not answer (yet): at boot
# it may still be starting; at shutdown its socket may be restarting.
PASS_CONNECT_RETRY = 60.0
QUERY_CONNECT_RETRY = 0.0


def strict_policy(ctx: Context) -> Policy:
    """The policy for ``check``: a missing default file means the built-in defaults; a broken
    one raises PolicyError with every problem. A valid file is kept as its last valid copy."""
    from libmgsave import policyfile

    if not ctx.policy_explicit and not os.path.lexists(ctx.policy_path):
        log.info("no policy file at %s: using the built-in defaults", ctx.policy_path)
        return _with_connections(BUILTIN_POLICY, ctx)
    data = policyfile.read_policy_file(ctx.policy_path, trust_insecure=ctx.trust_insecure)
    policy = policyfile.parse_policy(data, ctx.policy_path)
    keep_last_valid(ctx, data, "mgsave check")
    if not ctx.state.insecure:  # the next pass need not validate it again
        policyfile.cache.remember(ctx.state.path, ctx.policy_path, data, policy)
    return _with_connections(policy, ctx)


@dataclass(frozen=True)
class PolicyInUse:
    """The policy a pass (or ``plan``, ``status``) goes by, the problems of a broken file, and
    which policy that is (``PolicyChoice``: the file, its last valid copy, the built-in defaults)."""

    policy: Policy
    problems: list[Problem]
    choice: PolicyChoice


def pass_policy(ctx: Context, *, keep: bool = False) -> PolicyInUse:
    """The policy for a pass (and ``plan``, ``status``): never raises. A broken file gives its
    last valid copy (``state.policy_copy``), or the built-in defaults when there is none, plus
    its problems, each logged. ``keep``: a valid file is kept as the last valid copy."""
    from libmgsave import policyfile

    read = policyfile.read_policy_for_pass(ctx.policy_path, explicit=ctx.policy_explicit,
                                           trust_insecure=ctx.trust_insecure,
                                           cache_dir=None if ctx.state.insecure else ctx.state.path)
    if read.policy is not None:
        if read.policy.is_builtin:
            log.info("no policy file at %s: using the built-in defaults", ctx.policy_path)
        elif keep and read.data is not None:
            keep_last_valid(ctx, read.data, f"the {ctx.command} pass")
        origin = PolicyOrigin.BUILTIN if read.policy.is_builtin else PolicyOrigin.FILE
        return PolicyInUse(_with_connections(read.policy, ctx), [], PolicyChoice(origin, ctx.policy_path))
    for problem in read.problems:
        log.error("policy problem: %s", problem)
    policy, choice = _fallback(ctx, read)
    if choice.origin is PolicyOrigin.LAST_VALID:
        log.error("the policy %s is unusable: carrying on with its last valid copy (%s), not with the file as it "
                  "is now", ctx.policy_path, copy_stamp(choice.copy_saved, choice.copy_digest))
    else:
        log.error("the policy %s is unusable%s: carrying on with the built-in safe defaults (save every running "
                  "guest; resume at boot those that were running)", ctx.policy_path,
                  f" and so is its last valid copy ({choice.copy_refused})" if choice.copy_refused
                  else ", and no valid version of it was ever kept")
    return PolicyInUse(_with_connections(policy, ctx), list(read.problems), choice)


def policy_warnings(use: PolicyInUse) -> list[str]:
    """What ``plan`` and ``status`` say of a broken policy file: which policy they show."""
    if not use.problems:
        return []
    count = units.plural(len(use.problems), "problem")
    return [f"the policy file {use.choice.path} is broken ({count}): a pass now would run on "
            f"{use.choice.describe()}, as shown here"]


def _fallback(ctx: Context, read: PassPolicyFile) -> tuple[Policy, PolicyChoice]:
    """For a broken file: its last valid copy, else the built-in defaults (and why not the copy)."""
    from libmgsave import policyfile

    if ctx.state.insecure:
        refused = f"the state directory is not safe: {ctx.state.insecure}"
    else:
        try:
            copy = policy_copy.read(ctx.state.path, ctx.policy_path)
            if copy is not None:
                policy = policyfile.parse_policy(copy.data, f"{ctx.policy_path} (last valid copy)")
                return read.on(policy), PolicyChoice(PolicyOrigin.LAST_VALID, ctx.policy_path,
                                                     copy_saved=copy.saved, copy_digest=copy.digest)
            refused = None
        except policy_copy.CopyUnusable as why:
            refused = str(why)
        except PolicyError as error:  # a newer mgsave may refuse what an older one accepted
            refused = f"it is no longer valid: {error.problems[0]}"
    return read.on(BUILTIN_POLICY), PolicyChoice(PolicyOrigin.BUILTIN, ctx.policy_path, copy_refused=refused)


def keep_last_valid(ctx: Context, data: bytes, accepted_by: str) -> None:
    """Keep the bytes of the valid policy file as its last valid copy (not in a state directory
    others can write to: no copy is ever read from there). A failure is logged, never fatal."""
    if ctx.state.insecure:
        return
    try:
        if policy_copy.keep(ctx.state.path, ctx.policy_path, data, accepted_by):
            log.info("kept a copy of the valid policy %s in %s, for the passes should the file break",
                     ctx.policy_path, ctx.state.path)
    except OSError as error:
        # Only root can write the state directory: another user's check is no problem.
        level = logging.WARNING if os.geteuid() == 0 else logging.INFO
        log.log(level, "could not keep a copy of the valid policy %s in %s (%s): should the file break, a pass "
                "would run on an older copy or the built-in defaults", ctx.policy_path, ctx.state.path,
                error.strerror or error)


def _with_connections(policy: Policy, ctx: Context) -> Policy:
    """The policy with the connections of the command line (``--connect``), or, where the policy
    names none, of ``$LIBVIRT_DEFAULT_URI``: libvirt's own default, as virsh takes it."""
    if ctx.connect:
        return policy.with_connections(ctx.connect)
    if ctx.default_uri and not policy.connections_named:
        return policy.with_connections((ctx.default_uri,))
    return policy


def connect(policy: Policy, *, retry_for: float = QUERY_CONNECT_RETRY,
            give_up_at: float = 0.0) -> tuple[Connections, list[str]]:
    """Open every connection of the policy; a warning for each one that did not answer. Raises
    HypervisorUnavailable when none did. A lost connection is reconnected until ``give_up_at``
    (``time.monotonic()``; by default, not at all: a query just fails)."""
    connections, unreachable = Connections.open(policy.connections, retry_for=retry_for, give_up_at=give_up_at)
    warnings = [f"could not reach {uri}: its guests were not handled ({why})" for uri, why in unreachable.items()]
    return connections, warnings


def needs_details(policy: Policy) -> bool:
    """True when a rule matches on what only a guest's XML says (title, metadata)."""
    return any(rule.match.title or rule.match.metadata for rule in policy.rules)


def inventory(connections: Connections, policy: Policy, warnings: list[str] | None = None) -> list:
    """Every guest on every open connection. A connection that fails while its guests are listed
    (after a reconnect, when the pass may reconnect) is dropped: it costs its own guests, logged
    and added to ``warnings``, never the others'."""
    details = needs_details(policy)
    guests = []
    for host in connections.hosts():
        try:
            guests.extend(connections.call_with_reconnect(host.uri, lambda h=host: h.guests(with_details=details)))
        except HypervisorError as error:
            log.error("could not list the guests on %s (%s): they are not handled", host.uri, error.message)
            connections.drop(host.uri)
            if warnings is not None:
                warnings.append(f"could not list the guests on {host.uri}: its guests were not handled "
                                f"({error.message})")
    return guests


def shutdown_plan(ctx: Context, guests, policy: Policy, deadline: float | None = None,
                  connections: Connections | None = None, host_shutdown: HostShutdown | None = None) -> Plan:
    """The shutdown plan, with the save rate the last pass measured, the free space now, what
    each connection offers of parallel save channels, and what the peers of guests to migrate
    answer now; for ``host_shutdown``, the kind of shutdown (None: not known)."""
    from libmgsave import peers
    from libmgsave.plan.shutdown import plan_shutdown  # a boot pass does not load it

    previous = ctx.state.last_shutdown(quiet=True)
    room = {uri: save_room(uri) for uri in policy.connections}
    room[FILES_ROOM] = free_bytes(str(ctx.state.path))
    guests = list(guests)
    peer_uris = peers.peers_of(guests, policy)
    return plan_shutdown(guests, policy, state_dir=ctx.state.path, rates=learned_rates(previous, policy.connections),
                         deadline=deadline, room=room, channels=channel_support(connections),
                         peers=peers.probe_all(peer_uris),
                         source_types=peers.source_types(connections.hosts()) if connections and peer_uris else {},
                         host_shutdown=host_shutdown)


def refused_flags(guests, policy: Policy, connections: Connections) -> list[tuple[GuestInfo, str, str]]:
    """(guest, why, the rule that set it) for each guest whose policy asks for a flag its
    connection's driver refuses (``capabilities``): the pass would find out at boot."""
    from libmgsave import peers
    from libmgsave.capabilities import bypass_cache_refusal
    from libmgsave.matching import resolve

    refusals = {uri: bypass_cache_refusal(driver) for uri, driver in peers.source_types(connections.hosts()).items()}
    found = []
    for guest in guests:
        why = refusals.get(guest.connection)
        if why:
            effective = resolve(policy, guest)
            if effective.settings.bypass_cache:
                found.append((guest, why, effective.sources["bypass_cache"]))
    return found


def refused_flag_warnings(guests, policy: Policy, connections: Connections) -> list[str]:
    """``plan``'s warnings of ``refused_flags``: one a connection, naming its first guests."""
    by_connection: dict[tuple[str, str], list[str]] = {}
    for guest, why, _rule in refused_flags(guests, policy, connections):
        by_connection.setdefault((guest.connection, why), []).append(guest.name)
    return [f"{uri}: bypass_cache would fail the resume at boot of {_some(names)}: {why}"
            for (uri, why), names in by_connection.items()]


def _some(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def channel_support(connections: Connections | None) -> dict:
    """What each open connection offers of parallel save channels (``channels.ChannelSupport``)."""
    return {host.uri: host.channel_support() for host in (connections.hosts() if connections else [])}


def boot_plan(ctx: Context, pass_log: PassLog, guests, policy: Policy, connections: Connections, *,
              restore_unrecorded: bool = False) -> Plan:
    """The boot plan, from the last shutdown record (or, without one, the saved images alone),
    with what the peers say of the guests the record places there that are defined here again.
    ``restore_unrecorded``: see ``state.images.transient_images_without_record``."""
    from libmgsave import peers
    from libmgsave.actions import held  # a shutdown pass loads none of these
    from libmgsave.plan.boot import peer_questions, plan_boot

    record = pass_log.gather(lambda warnings: ctx.state.last_shutdown(warnings=warnings))
    boot = ctx.state.last_boot(quiet=True)
    if record is not None:
        record = dict(record, guests=_settled(record, guests))
    last = RecordedPass.from_dict(record) if record is not None else None
    unrecorded = _unrecorded_images(ctx, pass_log, record, boot, guests, connections, restore_unrecorded)
    recorded = last.guests if last is not None else {}
    resumes = held.resume_verdicts(connections, guests, recorded, [*recorded.values(), *unrecorded])
    return plan_boot(guests, policy, last, unrecorded, resumes=resumes,
                     booted_since=booted_since(record, boot), used_images=used_images(record, boot),
                     channels=channel_support(connections),
                     on_peers=peers.guests_on_peers(peer_questions(guests, policy, last)))


def _settled(record: dict, guests) -> dict:
    """The record's entries, with those an interrupted shutdown pass left 'pending' whose save
    completed all the same recorded as saved: a transient guest's whole save file is restored,
    not silently dropped."""
    complete = {path for path in pending_files(record) if save_file_is_complete(path)}
    return settle_interrupted(record["guests"], {guest_record_key(*g.key): g for g in guests}, complete)


def _unrecorded_images(ctx: Context, pass_log: PassLog, record: dict | None, boot: dict | None, guests, connections,
                       restore_unrecorded: bool) -> list:
    """Transient guests' save files no record names that the boot pass may restore (see
    ``state.images.transient_images_without_record``); none from an insecure state directory."""
    if ctx.state.insecure:
        if any(ctx.state.images.glob("*.save")):
            message = f"{ctx.state.images}: save files in an insecure state directory are not restored; kept"
            log.error("%s", message)
            pass_log.warn(message)
        return []
    known = {guest_record_key(*g.key) for g in guests} | set((boot or {}).get("guests", {}))
    return pass_log.gather(lambda warnings: transient_images_without_record(
        ctx.state.images, record, lambda path: read_with_any(connections.hosts(), path), warnings,
        known=known, restore_unrecorded=restore_unrecorded))


def kept_images(ctx: Context, policy: Policy):
    """The kept images' usage, and the warning (logged) when they take more than the policy's share."""
    usage = kept_usage(ctx.state.path, kept_files(ctx.state.path, kept_beside(policy.connections)))
    warning = over_share_warning(usage, policy.limits.kept_images_warn_share)
    if warning:
        log.warning("%s", warning)
    return usage, warning


def check_state_dir(ctx: Context, pass_log: PassLog) -> None:
    """A pass in a state directory others can write to still handles every guest (into it, for
    transient guests: losing them would be worse), but reads nothing from it, says so loudly
    and exits non-zero."""
    if not ctx.state.insecure:
        return
    message = ctx.state.insecure_warning()
    log.error("%s", message)
    pass_log.bookkeeping_failed_because(message, once=True)


def problems_dict(problems: list[Problem]) -> list[dict]:
    return [p.to_dict() for p in problems]
