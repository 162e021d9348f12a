"""Migration in the plan: which peer, the estimate under the deadline, what is dropped and why;
the boot plan of guests living on a peer; and the policy's errors about it."""

import uuid
from pathlib import Path

import pytest

from libmgsave.errors import PolicyError
from libmgsave.history import RecordedPass
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.outcomes import GuestResult, Outcome, Severity
from libmgsave.plan import Action, plan_boot, plan_shutdown
from libmgsave.plan.boot import peer_questions
from libmgsave.plan.peers import (DEFAULT_MIGRATION_THROUGHPUT, MIB, PeerBudget, PeerChoice, PeerFacts, PeerGuest,
                                  migration_seconds)
from libmgsave.policy import Migrate
from libmgsave.policyfile import parse_policy
from libmgsave.state.records import guest_record_key

STATE_DIR = Path("/nonexistent/state")
URI = "qemu:///system"
P1, P2 = "qemu+tls://p1.example.org/system", "qemu+tls://p2.example.org/system"
GiB = 1024**3


def guest(name, *, memory=GiB, state=GuestState.RUNNING):
    return GuestInfo(connection=URI, name=name, uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                     state=state, persistent=True, memory_kib=memory // 1024)


def policy(extra: str = "", chain: str = "[migrate, save, poweroff]"):
    return parse_policy(f"""
version: 1
defaults:
  on_shutdown: {chain}
  migrate: {{peers: ["{P1}", "{P2}"]{extra}}}
""", "policy.yaml")


def up(uri, free=8 * GiB, kind="QEMU"):
    return PeerFacts(uri, True, hypervisor_type=kind, free_bytes=free)


def plan(guests, p=None, peers=None, deadline=None):
    peers = {P1: up(P1), P2: up(P2)} if peers is None else peers
    return {e.guest.name: e for e in plan_shutdown(guests, p or policy(), state_dir=STATE_DIR, deadline=deadline,
                                                   peers=peers, source_types={URI: "QEMU"}).entries}


def test_the_first_peer_that_answers_is_chosen_and_the_estimate_is_shown():
    entry = plan([guest("a")])["a"]
    assert entry.actions == (Action.MIGRATE, Action.SAVE, Action.POWEROFF)
    assert entry.peer == P1
    assert entry.estimate_seconds == pytest.approx(GiB * 1.25 / DEFAULT_MIGRATION_THROUGHPUT)
    assert any(P1 in note for note in entry.notes)
    assert entry.notes == (f"migrates to {P1}, estimated to end 13 s into the pass",)
    assert entry.to_dict()["peer"] == P1


def test_an_unreachable_or_foreign_peer_is_passed_over_for_the_next():
    down = PeerFacts(P1, False, why="connection refused")
    assert plan([guest("a")], peers={P1: down, P2: up(P2)})["a"].peer == P2
    assert plan([guest("a")], peers={P1: up(P1, kind="LXC"), P2: up(P2)})["a"].peer == P2


def test_reservations_send_the_guest_that_no_longer_fits_to_the_next_peer():
    peers = {P1: up(P1, free=3 * GiB), P2: up(P2)}
    entries = plan([guest("a", memory=2 * GiB), guest("b", memory=2 * GiB)], peers=peers)
    assert (entries["a"].peer, entries["b"].peer) == (P1, P2)


def test_without_a_peer_that_can_take_it_the_chain_goes_on_and_the_guest_is_short_of_its_first_choice():
    peers = {P1: up(P1, free=GiB // 2), P2: PeerFacts(P2, False, why="no route to host")}
    entry = plan([guest("a")], peers=peers)["a"]
    assert entry.actions == (Action.SAVE, Action.POWEROFF)
    assert entry.peer is None and entry.first_choice is Action.MIGRATE and entry.short_of_first_choice
    [why] = [n for n in entry.notes if "no peer" in n]
    assert "not enough free memory" in why and "no route to host" in why
    # saved instead: degraded, since the migration was its first choice
    assert GuestResult(entry, Outcome.SAVED).severity is Severity.DEGRADED
    assert GuestResult(entry, Outcome.MIGRATED).severity is Severity.OK


def test_a_migration_that_cannot_end_before_the_deadline_is_not_planned():
    slow = policy(", bandwidth: 10")  # 10 MiB/s: a GiB takes about 128 s
    entry = plan([guest("a")], slow, deadline=60)["a"]
    assert entry.peer is None and entry.actions[0] is Action.SAVE
    assert any("past the deadline" in n for n in entry.notes)
    assert plan([guest("a")], slow, deadline=600)["a"].peer == P1


def test_migrations_share_the_link_so_later_ones_end_later():
    entries = plan([guest("a"), guest("b")])
    assert entries["b"].estimate_seconds == pytest.approx(2 * entries["a"].estimate_seconds)


def test_estimates_follow_bandwidth_and_live():
    assert migration_seconds(100 * MIB, Migrate(bandwidth=10, live=False), 1e12) == pytest.approx(10)
    assert migration_seconds(100 * MIB, Migrate(live=True), 100 * MIB) == pytest.approx(1.25)


def test_a_migrate_only_chain_without_a_peer_leaves_the_guest_alone():
    entry = plan([guest("a")], policy(chain="[migrate]"), peers={})["a"]
    assert entry.skipped


def test_boot_brings_a_migrated_guest_home_only_with_come_back():
    g = guest("a")
    record = {"started": 1.0, "guests": {guest_record_key(*g.key): {
        "connection": URI, "name": "a", "uuid": g.uuid, "outcome": "migrated", "peer": P1, "memory_kib": 1024}}}
    home = ', come_back: true, home: "qemu+tls://home.example.org/system"'
    [entry] = plan_boot([], policy(home), RecordedPass.from_dict(record)).entries
    assert entry.actions == (Action.RETURN,) and entry.peer == P1 and entry.guest.persistent
    [entry] = plan_boot([], policy(), RecordedPass.from_dict(record)).entries
    assert entry.skipped and P1 in entry.reason
    # a peer the policy does not list is never contacted, whatever the record says
    record["guests"][guest_record_key(*g.key)]["peer"] = "qemu+tls://elsewhere.example.org/system"
    [entry] = plan_boot([], policy(home), RecordedPass.from_dict(record)).entries
    assert entry.skipped and "does not list" in entry.reason
    # defined here again (returned by hand, say): the usual decision
    [entry] = plan_boot([g], policy(home), RecordedPass.from_dict(record)).entries
    assert entry.skipped and "already running" in entry.reason


def test_a_guest_defined_here_again_starts_only_when_its_peer_says_it_is_not_there():
    g = guest("a", state=GuestState.SHUTOFF)
    record = {"started": 1.0, "guests": {guest_record_key(*g.key): {
        "connection": URI, "name": "a", "uuid": g.uuid, "outcome": "migrated", "peer": P1, "memory_kib": 1024}}}
    assert peer_questions([g], policy(), RecordedPass.from_dict(record)) == {P1: [g.uuid]}
    assert peer_questions([guest("a")], policy(), RecordedPass.from_dict(record)) == {}  # running here: nothing to start

    def decide(there, extra=""):
        [entry] = plan_boot([g], policy(extra), RecordedPass.from_dict(record), on_peers={(P1, g.uuid): there} if there else {}).entries
        return entry

    running = decide(PeerGuest(P1, g.uuid, True, lives_there=True, state="paused"))
    assert running.skipped and "lives on" in running.reason and not running.short_of_first_choice
    home = decide(PeerGuest(P1, g.uuid, True, lives_there=True, state="running"),
                  ', come_back: true, home: "qemu+tls://home.example.org/system"')
    assert home.actions == (Action.RETURN,) and home.peer == P1 and not home.on_peer and home.state == "shut off"
    gone = decide(PeerGuest(P1, g.uuid, True, state="not defined"))
    assert gone.actions == (Action.START,) and "does not run there" in gone.notes[0]
    for unknown in (PeerGuest(P1, g.uuid, False, why="no answer within 15 s"), None):
        held = decide(unknown)
        assert held.skipped and held.left_off_because and held.first_choice is Action.START
        assert held.short_of_first_choice and "not started here" in held.reason


def test_a_guest_on_its_peer_is_shown_on_peer_not_shut_off():
    g = guest("a")
    record = {"started": 1.0, "guests": {guest_record_key(*g.key): {
        "connection": URI, "name": "a", "uuid": g.uuid, "outcome": "migrated", "peer": P1, "memory_kib": 1024}}}
    [entry] = plan_boot([], policy(), RecordedPass.from_dict(record)).entries
    assert entry.on_peer and entry.state == "on peer" and entry.to_dict()["state"] == "on-peer"


@pytest.mark.parametrize("text, where, words", [
    ("defaults: {on_shutdown: [migrate, save]}", "defaults.on_shutdown[0]", "needs peers"),
    ("guests:\n  - match: {name: a}\n    on_shutdown: [migrate]", "guests[0].on_shutdown[0]", "needs peers"),
    ("defaults: {migrate: {peers: [qemu+tls://p/system], come_back: true}}", "defaults.migrate.come_back", "home"),
    ("defaults: {migrate: {peers: ['not a uri']}}", "defaults.migrate.peers[0]", "libvirt URI"),
    ("defaults: {migrate: {peers: [qemu+tls://p/system], timeout: 0}}", "defaults.migrate.timeout", "greater than 0"),
    ("limits: {max_parallel_migrations: 0}", "limits.max_parallel_migrations", ""),
])
def test_policy_errors_name_the_key(text, where, words):
    with pytest.raises(PolicyError) as raised:
        parse_policy(f"version: 1\n{text}\n", "policy.yaml")
    [problem] = raised.value.problems
    assert problem.path == where and words in problem.message and problem.line is not None


def test_peers_in_defaults_serve_a_rule_that_adds_the_step():
    p = parse_policy(f"""
version: 1
defaults: {{migrate: {{peers: ["{P1}"]}}}}
guests:
  - match: {{name: a}}
    on_shutdown: [migrate, poweroff]
""", "policy.yaml")
    assert plan([guest("a")], p)["a"].peer == P1


def test_a_save_that_takes_the_place_of_a_dropped_migration_is_budgeted_like_any_save():
    peers = {P1: PeerFacts(P1, False), P2: PeerFacts(P2, False)}
    entry = plan([guest("a", memory=100 * GiB)], peers=peers, deadline=60)["a"]
    assert entry.actions == (Action.POWEROFF,), entry.notes
    assert entry.first_choice is Action.MIGRATE
    assert any("save skipped" in n for n in entry.notes) and any("migration skipped" in n for n in entry.notes)


P3, P4 = "qemu+tls://p3.example.org/system", "qemu+tls://p4.example.org/system"


def test_each_peer_passed_over_is_named_in_turn_with_its_reason():
    peers = {P1: PeerFacts(P1, False, why="connection refused"), P2: up(P2, kind="LXC"), P3: up(P3, free=GiB // 2),
             P4: PeerFacts(P4, False)}
    budget = PeerBudget(peers, {URI: "QEMU"}, 600)
    missing = "qemu+tls://gone.example.org/system"  # no facts at all: not looked at
    assert budget.choose(guest("a"), Migrate(peers=(P1, P2, P3, P4, missing))) == PeerChoice(
        None, why=f"migration skipped: no peer can take it ({P1}: unreachable (connection refused); "
                  f"{P2}: runs LXC, the guest QEMU; {P3}: not enough free memory (512 MiB left, the guest has "
                  f"1.0 GiB); {P4}: unreachable; {missing}: unreachable)")
    assert budget.reserved == {} and budget.planned_seconds == 0.0


def test_a_peer_whose_free_memory_is_taken_by_the_guests_before_says_so():
    budget = PeerBudget({P1: up(P1, free=GiB)}, {URI: "QEMU"}, 600)
    assert budget.choose(guest("a"), Migrate(peers=(P1,))).peer == P1
    assert budget.reserved == {P1: GiB}
    assert budget.choose(guest("b"), Migrate(peers=(P1,))).why == (
        f"migration skipped: no peer can take it ({P1}: not enough free memory (0 B left, the guest has 1.0 GiB))")


def test_a_peer_of_an_unknown_type_or_a_connection_of_one_is_not_refused_for_it():
    peers = {P1: PeerFacts(P1, True, hypervisor_type=None, free_bytes=None), P2: up(P2, kind="LXC")}
    assert PeerBudget(peers, {URI: "QEMU"}, 600).choose(guest("a"), Migrate(peers=(P1,))).peer == P1
    assert PeerBudget(peers, {}, 600).choose(guest("a"), Migrate(peers=(P2,))).peer == P2


def test_a_migration_that_ends_exactly_at_the_deadline_is_planned_and_the_next_is_not():
    """A GiB at an eighth of a GiB per second, live (1.25 times): 10 s, the whole budget."""
    budget = PeerBudget({P1: up(P1)}, {URI: "QEMU"}, 10.0, rate=GiB / 8)
    assert budget.choose(guest("a"), Migrate(peers=(P1,))) == PeerChoice(P1, 10.0)
    assert budget.choose(guest("b"), Migrate(peers=(P1,))) == PeerChoice(
        None, why="migration skipped: it would end about 20 s into the pass, past the deadline")


def test_the_facts_of_a_peer_as_json_say_no_reason_for_one_that_answered():
    assert up(P1).to_dict() == {"uri": P1, "reachable": True, "why": None, "hypervisor_type": "QEMU",
                                "free_bytes": 8 * GiB}
    assert PeerFacts(P2, False, why="no route to host").to_dict() == {
        "uri": P2, "reachable": False, "why": "no route to host", "hypervisor_type": None, "free_bytes": None}


def test_the_memory_reserved_on_a_peer_adds_up_guest_after_guest():
    budget = PeerBudget({P1: up(P1, free=3 * GiB), P2: up(P2)}, {URI: "QEMU"}, 600)
    assert [budget.choose(guest(n), Migrate(peers=(P1, P2))).peer for n in ("a", "b", "c", "d")] == [P1, P1, P1, P2]
    assert budget.reserved == {P1: 3 * GiB, P2: GiB}
