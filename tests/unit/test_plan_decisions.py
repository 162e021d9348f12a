"""Decisions of the planner no other test pins down, each asserted exactly: what a failed resume
leads to, the order at boot, a guest on a peer with ``home`` but no ``come_back``, transient
guests restored under the guests' rules, cycles broken at a given edge, ``after`` on the guest's
own connection first, the room of transient guests' save files, channels divided unevenly, what
each shutdown entry names (rate, managed image, order, cores), and every key of the plan as JSON.

Guests have fixed UUIDs (uuid5 of the connection and name); records are written to disk and read
back through the state's reader, as a pass reads them (``read_back``)."""

import json
import os
import uuid
from pathlib import Path

import pytest

from libmgsave.channels import ChannelSupport
from libmgsave.history import GuestEntry, HostShutdown, RecordedPass, ShutdownKind
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.outcomes import Outcome
from libmgsave.plan import DEFAULT_SAVE_THROUGHPUT, FILES_ROOM, Action, SaveRate, plan_boot, plan_shutdown
from libmgsave.plan.boot import peer_questions
from libmgsave.plan.peers import PeerFacts, PeerGuest
from libmgsave.policyfile import parse_policy
from libmgsave.saveimages import managed_image_path
from libmgsave.state import RECORD_FORMAT, RECORD_VERSION, guest_record_key, read_record

URI = "test:///default"
OTHER = "qemu+ssh://other.example.org/system"
PEER = "qemu+tls://peer.example.org/system"
HOME = "qemu+tls://home.example.org/system"
GiB_KIB = 1024 * 1024


def guest(name, state_=GuestState.SHUTOFF, *, image=False, persistent=True, uri=URI, memory_kib=GiB_KIB):
    return GuestInfo(connection=uri, name=name, uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{uri} {name}")),
                     state=state_, persistent=persistent, has_managed_save=image, memory_kib=memory_kib)


def policy(text="version: 1\n"):
    return parse_policy(text, "policy.yaml")


def entry(g, outcome, **more):
    """One guest's entry of a shutdown record, as a pass writes it."""
    return {"connection": g.connection, "name": g.name, "uuid": g.uuid, "outcome": str(outcome),
            "memory_kib": g.memory_kib, **more}


def read_back(state_dir: Path, *entries, started=100.0):
    """A shutdown record of ``entries`` written into ``state_dir`` and read back as a pass reads it
    (the boot plan takes it typed)."""
    state_dir.mkdir(exist_ok=True)
    path = state_dir / "last-shutdown.json"
    path.write_text(json.dumps({"format": RECORD_FORMAT, "kind": "shutdown", "version": RECORD_VERSION,
                                "started": started, "guests": {guest_record_key(e["connection"], e["uuid"]): e
                                                               for e in entries}}))
    return RecordedPass.from_dict(read_record(path, "shutdown"))


def save_file(state_dir: Path, g) -> str:
    return str(state_dir / "images" / f"{g.uuid}.save")


def after_warnings(plan):
    """The plan's warnings but the one every plan without a record has."""
    return tuple(w for w in plan.warnings if not w.startswith("no usable shutdown record"))


def names(plan):
    return [e.guest.name for e in plan.entries]


def by_name(plan):
    return {e.guest.name: e for e in plan.entries}


# -- a failed resume: boot fresh or leave off ----------------------------------------------------


def test_what_a_failed_resume_leads_to_is_the_guests_on_resume_failure(tmp_path):
    p = policy("""
version: 1
guests:
  - match: {name: "off*"}
    on_resume_failure: leave-off
  - match: {name: "fresh*"}
    on_resume_failure: boot-fresh
""")
    guests = [guest("off1", image=True), guest("fresh1", image=True), guest("default1", image=True)]
    record = read_back(tmp_path, *(entry(g, Outcome.SAVED) for g in guests))
    plan = by_name(plan_boot(guests, p, record))
    assert {n: (e.actions, e.if_resume_fails) for n, e in plan.items()} == {
        "off1": ((Action.RESUME,), Action.SKIP),
        "fresh1": ((Action.RESUME,), Action.START),
        "default1": ((Action.RESUME,), Action.START),  # boot-fresh is the built-in default
    }
    # a resume that is not about to be tried changes nothing: no image, no news to plan for
    assert not any(e.boots_fresh_because for e in plan.values())


# -- the order at boot ---------------------------------------------------------------------------


def test_within_an_order_group_higher_priority_starts_first_then_by_name():
    p = policy("""
version: 1
guests:
  - match: {name: c}
    priority: 1
  - match: {name: b}
    priority: 5
  - match: {name: early}
    order: -1
    priority: -10
""")
    plan = plan_boot([guest(n, image=True) for n in ("a", "b", "c", "d", "early")], p, None)
    assert names(plan) == ["early", "b", "c", "a", "d"]
    assert [e.order for e in plan.entries] == [-1, 0, 0, 0, 0]


def test_guests_of_one_name_on_two_connections_start_in_connection_order():
    plan = plan_boot([guest("a", image=True, uri=OTHER), guest("a", image=True)], policy(), None)
    assert [e.guest.connection for e in plan.entries] == sorted([OTHER, URI])


# -- a guest on its peer: home alone does not bring it back --------------------------------------


def _migrate_policy(extra):
    return policy(f'version: 1\nconnections: ["{URI}"]\ndefaults:\n  on_shutdown: [migrate, save]\n'
                  f'  migrate: {{peers: ["{PEER}"]{extra}}}\n')


def test_home_without_come_back_leaves_a_migrated_guest_on_its_peer(tmp_path):
    g = guest("a")
    record = read_back(tmp_path, entry(g, Outcome.MIGRATED, peer=PEER))
    [stays] = plan_boot([], _migrate_policy(f', home: "{HOME}"'), record).entries
    assert stays.actions == (Action.SKIP,) and stays.on_peer and stays.peer == PEER
    assert stays.reason == f"migrated to {PEER} at the last shutdown; runs there (come_back is off)"
    [back] = plan_boot([], _migrate_policy(f', home: "{HOME}", come_back: true'), record).entries
    assert back.actions == (Action.RETURN,) and back.reason == f"migrated to {PEER} at the last shutdown; comes back"


def test_home_without_come_back_leaves_a_guest_defined_here_again_that_lives_on_its_peer(tmp_path):
    g = guest("a")
    record = read_back(tmp_path, entry(g, Outcome.MIGRATED, peer=PEER))
    there = {(PEER, g.uuid): PeerGuest(PEER, g.uuid, True, lives_there=True, state="running")}
    [stays] = plan_boot([g], _migrate_policy(f', home: "{HOME}"'), record, on_peers=there).entries
    assert stays.actions == (Action.SKIP,) and stays.peer == PEER
    assert stays.reason == f"defined here again, but it lives on {PEER} (running): not started here (come_back is off)"


def test_a_migrated_guest_of_a_connection_this_pass_lacks_is_not_brought_home(tmp_path):
    g = guest("a", uri=OTHER)
    record = read_back(tmp_path, entry(g, Outcome.MIGRATED, peer=PEER))
    plan = plan_boot([], _migrate_policy(f', home: "{HOME}", come_back: true'), record)
    assert plan.entries == ()


# -- transient guests restored from their save files ---------------------------------------------


def test_restored_transient_guests_follow_the_guests_rules(tmp_path):
    p = policy("""
version: 1
guests:
  - match: {name: "t-never"}
    autostart: never
  - match: {name: "t-first"}
    order: -5
""")
    first, never, persistent = guest("t-first", persistent=False), guest("t-never", persistent=False), \
        guest("p", image=True)
    record = read_back(tmp_path, entry(never, Outcome.SAVED_TO_FILE, image=save_file(tmp_path, never)),
                       entry(first, Outcome.SAVED_TO_FILE, image=save_file(tmp_path, first)),
                       entry(persistent, Outcome.SAVED))
    plan = plan_boot([persistent], p, record)
    assert names(plan) == ["t-first", "p", "t-never"]
    entries = by_name(plan)
    assert entries["t-first"].actions == (Action.RESTORE,) and entries["t-first"].order == -5
    assert entries["t-first"].image == save_file(tmp_path, first)
    assert entries["t-first"].managed_image is None and not entries["t-first"].guest.persistent
    assert entries["t-never"].actions == (Action.SKIP,)
    assert entries["t-never"].reason == "autostart never; its saved state is kept for a manual start"
    assert entries["p"].actions == (Action.RESUME,)


def test_a_stale_save_file_is_passed_over_and_the_files_after_it_are_still_restored(tmp_path):
    stale, fresh = guest("stale", persistent=False), guest("fresh", persistent=False)
    record = read_back(tmp_path, entry(stale, Outcome.SAVED_TO_FILE, image=save_file(tmp_path, stale)),
                       entry(fresh, Outcome.SAVED_TO_FILE, image=save_file(tmp_path, fresh)))
    plan = plan_boot([], policy(), record, booted_since=True,
                     used_images={guest_record_key(*stale.key)})
    [restored] = plan.entries
    assert restored.guest.name == "fresh" and restored.actions == (Action.RESTORE,)
    assert plan.warnings == (f"stale: its save file {save_file(tmp_path, stale)} was restored by an earlier boot "
                             f"pass and is stale; not restored again",)


def test_a_save_file_of_a_guest_defined_here_is_not_restored_over_it(tmp_path):
    t = guest("t", persistent=False)
    record = read_back(tmp_path, entry(t, Outcome.SAVED_TO_FILE, image=save_file(tmp_path, t)))
    running = guest("t", GuestState.RUNNING, persistent=False)
    [e] = plan_boot([running], policy(), record).entries
    assert e.actions == (Action.SKIP,) and e.image is None and e.reason == "already running"


# -- cycles: exactly which edge is dropped -------------------------------------------------------


def _after(*pairs):
    rules = "".join(f"  - match: {{name: {a}}}\n    after: [{b}]\n" for a, b in pairs)
    return policy("version: 1\nguests:\n" + rules)


def test_a_two_guest_cycle_drops_the_edge_back_to_the_first_guest():
    a, b = guest("a", image=True), guest("b", image=True)
    plan = plan_boot([a, b], _after(("a", "b"), ("b", "a")), None)
    entries = by_name(plan)
    assert entries["a"].wait_for == (b.key,) and entries["b"].wait_for == ()
    assert names(plan) == ["a", "b"]
    assert "'after' forms a cycle (a -> b -> a); ignoring 'b after a'" in plan.warnings


def test_a_cycle_that_does_not_start_at_the_first_guest_drops_only_its_own_last_edge():
    a, b, c, d = (guest(n, image=True) for n in "abcd")
    plan = plan_boot([a, b, c, d], _after(("a", "b"), ("b", "c"), ("c", "d"), ("d", "b")), None)
    entries = by_name(plan)
    assert {n: e.wait_for for n, e in entries.items()} == {
        "a": (b.key,), "b": (c.key,), "c": (d.key,), "d": ()}
    cycles = [w for w in plan.warnings if "cycle" in w]
    assert cycles == ["'after' forms a cycle (b -> c -> d -> b); ignoring 'd after b'"]


def test_two_cycles_are_each_broken_once():
    guests = [guest(n, image=True) for n in ("a", "b", "c", "d")]
    plan = plan_boot(guests, _after(("a", "b"), ("b", "a"), ("c", "d"), ("d", "c")), None)
    assert [w for w in plan.warnings if "cycle" in w] == [
        "'after' forms a cycle (a -> b -> a); ignoring 'b after a'",
        "'after' forms a cycle (c -> d -> c); ignoring 'd after c'"]
    assert {n: len(e.wait_for) for n, e in by_name(plan).items()} == {"a": 1, "b": 0, "c": 1, "d": 0}


def test_a_guest_reached_twice_without_a_cycle_is_no_cycle():
    """a after b and c, both after d: d is reached twice, and that is no cycle."""
    guests = [guest(n, image=True) for n in "abcd"]
    p = policy("version: 1\nguests:\n  - match: {name: a}\n    after: [b, c]\n"
               "  - match: {name: b}\n    after: [d]\n  - match: {name: c}\n    after: [d]\n")
    plan = plan_boot(guests, p, None)
    assert after_warnings(plan) == ()
    assert names(plan) == ["a", "b", "c", "d"]
    assert by_name(plan)["a"].wait_for == (guests[1].key, guests[2].key)


# -- after: the guest's own connection first ----------------------------------------------------


def test_after_prefers_the_guest_of_that_name_on_the_same_connection():
    db_here, db_there = guest("db", image=True), guest("db", image=True, uri=OTHER)
    app_there, app_here = guest("app", image=True, uri=OTHER), guest("app", image=True)
    lone = guest("lone", image=True, uri="qemu+ssh://third.example.org/system")
    p = policy("version: 1\nguests:\n  - match: {name: app}\n    after: [db]\n  - match: {name: lone}\n"
               "    after: [db]\n")
    plan = plan_boot([db_here, db_there, app_there, app_here, lone], p, None)
    waits = {e.key: e.wait_for for e in plan.entries}
    assert waits[app_there.key] == (db_there.key,)
    assert waits[app_here.key] == (db_here.key,)
    # on no connection of its own: the first guest of that name, in the order the guests came
    assert waits[lone.key] == (db_here.key,)
    assert after_warnings(plan) == ()


def test_after_naming_the_guest_itself_is_ignored_with_a_warning_even_beside_a_namesake():
    """A pattern's rule names a guest it matches; a guest of that name on another connection is
    not taken instead of it."""
    here, there = guest("a1", image=True), guest("a1", image=True, uri=OTHER)
    plan = plan_boot([here, there], _after(('"a*"', "a1")), None)
    assert all(e.wait_for == () for e in plan.entries)
    assert after_warnings(plan) == ("a1: 'after' names the guest itself; ignored",) * 2


def test_after_a_name_of_no_guest_suggests_the_nearest():
    plan = plan_boot([guest("web", image=True), guest("database", image=True)], _after(("web", "databse")), None)
    assert after_warnings(plan) == ("web: 'after' names 'databse', which is not a guest here; ignored "
                             "(did you mean 'database'?)",)
    assert by_name(plan)["web"].wait_for == ()


# -- transient guests' save files have a room of their own ---------------------------------------


def test_a_transient_guests_save_is_measured_against_the_state_directorys_room_only():
    persistent, transient = guest("p", GuestState.RUNNING), guest("t", GuestState.RUNNING, persistent=False)
    no_room_for_images = by_name(plan_shutdown([persistent, transient], policy(), state_dir=Path("/s"),
                                               room={URI: 0, FILES_ROOM: 2 * GiB_KIB * 1024}))
    assert no_room_for_images["p"].actions[0] is Action.SHUTDOWN
    assert no_room_for_images["t"].actions[0] is Action.SAVE_TO_FILE
    no_room_for_files = by_name(plan_shutdown([persistent, transient], policy(), state_dir=Path("/s"),
                                              room={URI: 2 * GiB_KIB * 1024, FILES_ROOM: 0}))
    assert no_room_for_files["p"].actions[0] is Action.SAVE
    assert no_room_for_files["t"].actions[0] is Action.SHUTDOWN
    assert no_room_for_files["t"].save_dropped_because == "save skipped: its image may need 1.0 GiB, only 0 B free"


def test_each_transient_save_takes_its_size_from_the_room_left_for_files():
    guests = [guest(n, GuestState.RUNNING, persistent=False) for n in ("t1", "t2", "t3")]
    room = {FILES_ROOM: 2 * GiB_KIB * 1024}  # two of the three 1 GiB images, exactly
    entries = by_name(plan_shutdown(guests, policy(), state_dir=Path("/s"), room=room))
    assert [entries[n].actions[0] for n in ("t1", "t2", "t3")] == [Action.SAVE_TO_FILE, Action.SAVE_TO_FILE,
                                                                 Action.SHUTDOWN]
    assert entries["t3"].dropped_first_choice is Action.SAVE_TO_FILE and entries["t3"].image is None
    assert room == {FILES_ROOM: 2 * GiB_KIB * 1024}, "the caller's mapping is not changed"


# -- channels divided among the saves and restores that run at once -----------------------------


CHANNELS = "version: 1\nlimits: {max_parallel_saves: 2, max_parallel_starts: 2}\ndefaults: {save_channels: auto}\n"


@pytest.mark.parametrize("cores, each", [(7, 3), (5, 2), (3, 1), (1, 1), (16, 4)])
def test_auto_channels_divide_the_cores_unevenly_among_the_saves_at_once(cores, each):
    big = 4 * GiB_KIB
    guests = [guest(n, GuestState.RUNNING, memory_kib=big) for n in ("a", "b", "c")]
    plan = plan_shutdown(guests, policy(CHANNELS), state_dir=Path("/s"), channels={URI: ChannelSupport(True)},
                         cores=cores)
    assert [e.save_channels for e in plan.entries] == [each] * 3


def test_auto_channels_count_only_the_guests_that_save():
    big = 4 * GiB_KIB
    p = policy("version: 1\nlimits: {max_parallel_saves: 4}\ndefaults: {save_channels: auto}\nguests:\n"
               "  - match: {name: 'x*'}\n    on_shutdown: [shutdown]\n")
    guests = [guest("a", GuestState.RUNNING, memory_kib=big), guest("b", GuestState.RUNNING, memory_kib=big),
              guest("x1", GuestState.RUNNING), guest("x2", GuestState.RUNNING), guest("off", memory_kib=big)]
    plan = by_name(plan_shutdown(guests, p, state_dir=Path("/s"), channels={URI: ChannelSupport(True)}, cores=8))
    assert (plan["a"].save_channels, plan["b"].save_channels) == (4, 4)  # 8 cores, 2 saves at once


def test_restores_at_boot_divide_the_cores_among_the_restores_at_once(tmp_path):
    ts = [guest(n, persistent=False, memory_kib=4 * GiB_KIB) for n in ("t1", "t2", "t3")]
    record = read_back(tmp_path, *(entry(t, Outcome.SAVED_TO_FILE, image=save_file(tmp_path, t)) for t in ts))
    plan = plan_boot([guest("p", image=True, memory_kib=4 * GiB_KIB)], policy(CHANNELS), record,
                     channels={URI: ChannelSupport(True)}, cores=5)
    assert {e.guest.name: e.save_channels for e in plan.entries} == {"t1": 2, "t2": 2, "t3": 2, "p": 1}
    one = plan_boot([], policy(CHANNELS), read_back(tmp_path, entry(ts[0], Outcome.SAVED_TO_FILE,
                                                                    image=save_file(tmp_path, ts[0]))),
                    channels={URI: ChannelSupport(True)}, cores=5)
    assert [e.save_channels for e in one.entries] == [4]  # alone: min(4, 5 cores)


# -- why a guest that was running boots fresh: the note an admin reads ----------------------------


LOST = {
    Outcome.PENDING: "it was running at the last shutdown but was not saved (its record says 'pending': the pass was "
                     "cut short, by a crash or a power loss): it boots fresh, its memory state is lost",
    Outcome.INTERRUPTED: "it was running at the last shutdown but the shutdown pass was stopped (by a signal) before "
                         "it reached it: it boots fresh, its memory state is lost",
    Outcome.FAILED: "it was running at the last shutdown and every step of its shutdown chain failed (its record "
                    "says 'failed'): it boots fresh, its memory state is lost",
    Outcome.SAVED: "the last shutdown saved it, but there is no saved image for it any more (removed by someone?): "
                   "it boots fresh, its memory state is lost",
}
LOST[Outcome.SAVED_TO_FILE] = LOST[Outcome.SAVED]


@pytest.mark.parametrize("outcome", [*LOST, Outcome.SHUT_DOWN])
def test_a_guest_that_was_running_says_why_it_boots_fresh(tmp_path, outcome):
    g = guest("g")
    [e] = plan_boot([g], policy(), read_back(tmp_path, entry(g, outcome))).entries
    assert e.actions == (Action.START,)
    assert e.reason == f"if-running: was running at the last shutdown ({outcome}); boots fresh"
    assert e.boots_fresh_because == LOST.get(outcome)
    assert e.notes == ((LOST[outcome],) if outcome in LOST else ())
    assert e.short_of_first_choice is (outcome in LOST)
    # after a boot pass since the record, a fresh start is no news: it may have been stopped by hand
    [again] = plan_boot([g], policy(), read_back(tmp_path, entry(g, outcome)), booted_since=True).entries
    assert again.boots_fresh_because is None and again.notes == ()


def test_a_restored_transient_guest_is_matched_by_its_recorded_title_and_metadata(tmp_path):
    ns = "https://example.org/ns/mgsave"
    p = policy(f"""
version: 1
guests:
  - match: {{title: "*prod*"}}
    order: -3
  - match: {{metadata: {{namespace: "{ns}", text: "tier=db"}}}}
    order: -7
""")
    by_title, by_meta, plain = (guest(n, persistent=False) for n in ("by-title", "by-meta", "plain"))
    record = read_back(tmp_path,
                       entry(by_title, Outcome.SAVED_TO_FILE, image=save_file(tmp_path, by_title), title="prod web"),
                       entry(by_meta, Outcome.SAVED_TO_FILE, image=save_file(tmp_path, by_meta),
                             metadata={ns: "tier=db"}),
                       {k: v for k, v in entry(plain, Outcome.SAVED_TO_FILE, image=save_file(tmp_path, plain)).items()
                        if k != "memory_kib"})
    plan = plan_boot([], p, record)
    assert [(e.guest.name, e.order) for e in plan.entries] == [("by-meta", -7), ("by-title", -3), ("plain", 0)]
    entries = by_name(plan)
    assert entries["by-title"].guest.title == "prod web" and entries["by-meta"].guest.metadata == {ns: "tier=db"}
    assert entries["plain"].guest.title == "" and entries["plain"].guest.metadata == {}
    assert entries["plain"].guest.memory_kib == 0  # not recorded: unknown, never a made-up size
    assert entries["plain"].guest.state is GuestState.SHUTOFF


def test_a_guest_defined_here_again_says_what_its_peer_answered(tmp_path):
    g = guest("a")
    record = read_back(tmp_path, entry(g, Outcome.MIGRATED, peer=PEER))
    come_back = _migrate_policy(f', home: "{HOME}", come_back: true')
    there = {(PEER, g.uuid): PeerGuest(PEER, g.uuid, True, lives_there=True, state="paused")}
    [back] = plan_boot([g], come_back, record, on_peers=there).entries
    assert back.actions == (Action.RETURN,) and back.peer == PEER and not back.on_peer
    assert back.reason == f"defined here again, but it lives on {PEER} (paused); comes back"
    gone = {(PEER, g.uuid): PeerGuest(PEER, g.uuid, True, state="not defined")}
    [starts] = plan_boot([g], come_back, record, on_peers=gone).entries
    assert starts.actions == (Action.START,) and starts.peer == PEER
    assert starts.notes[-1] == f"recorded as migrated to {PEER}, which says it does not run there (not defined): it " \
                               f"starts here"
    [unasked] = plan_boot([g], come_back, record).entries
    assert unasked.left_off_because == (f"recorded as migrated to {PEER}, but defined here again: {PEER} could not "
                                        f"be asked (not asked); not started here, in case it runs there")
    assert unasked.reason == unasked.left_off_because and unasked.first_choice is Action.START
    unlisted = policy(f'version: 1\nconnections: ["{URI}"]\n')
    [unlisted_entry] = plan_boot([g], unlisted, record).entries
    assert unlisted_entry.reason == (f"recorded as migrated to {PEER}, but defined here again: not asked: its policy "
                                     f"does not list {PEER} (any more); not started here, in case it runs there")


# -- the shutdown plan's budget: its bounds, and what it says ------------------------------------


def test_a_save_that_ends_exactly_when_the_deadline_less_the_reserve_does_is_kept():
    """30 MiB at 1 MiB/s ends 30 s into the pass: exactly the 40 s deadline less its 10 s reserve.
    A second one would end at 60 s: dropped, and the note says when and why."""
    p = policy("version: 1\nlimits: {shutdown_deadline: 40}\n")
    guests = [guest(n, GuestState.RUNNING, memory_kib=30 * 1024) for n in ("a", "b")]
    entries = by_name(plan_shutdown(guests, p, state_dir=Path("/s"), rates={URI: SaveRate(2**20, "measured")}))
    assert entries["a"].actions == (Action.SAVE, Action.SHUTDOWN, Action.POWEROFF)
    assert entries["a"].estimate_seconds == 30.0
    assert entries["a"].reason == "running; on_shutdown chain save -> shutdown -> poweroff"
    assert entries["b"].actions == (Action.SHUTDOWN, Action.POWEROFF)
    assert entries["b"].save_dropped_because == ("save skipped: it would end about 1 min 00 s into the pass, past the "
                                                 "40 s deadline less the 10 s kept for the fallback steps")
    assert entries["b"].notes == (entries["b"].save_dropped_because,)
    assert entries["b"].first_choice is Action.SAVE and entries["b"].managed_image is None


def test_a_save_whose_image_fills_the_free_space_exactly_is_kept():
    guests = [guest(n, GuestState.RUNNING) for n in ("a", "b")]
    entries = by_name(plan_shutdown(guests, policy(), state_dir=Path("/s"), room={URI: GiB_KIB * 1024}))
    assert entries["a"].actions[0] is Action.SAVE and entries["b"].actions[0] is Action.SHUTDOWN
    assert entries["b"].save_dropped_because == "save skipped: its image may need 1.0 GiB, only 0 B free"


def test_a_transient_guests_chain_says_where_its_save_goes(tmp_path):
    t = guest("t", GuestState.RUNNING, persistent=False)
    [e] = plan_shutdown([t], policy(), state_dir=tmp_path).entries
    assert e.actions == (Action.SAVE_TO_FILE, Action.SHUTDOWN, Action.POWEROFF)
    assert e.image == save_file(tmp_path, t) and e.managed_image is None
    assert e.notes == ("transient guest: saved to a file, restored from it at boot",)
    assert e.reason == "running; on_shutdown chain save-to-file -> shutdown -> poweroff"


def test_each_boot_decision_says_why_in_its_own_words(tmp_path):
    p = policy("version: 1\nguests:\n  - match: {name: 'always*'}\n    autostart: always\n"
               "  - match: {name: 'never*'}\n    autostart: never\n")
    guests = [guest("up", GuestState.RUNNING), guest("never-saved", image=True), guest("never-off"),
              guest("always-saved", image=True), guest("always-off"), guest("was-saved", image=True),
              guest("not-saved", image=True), guest("not-off")]
    record = read_back(tmp_path, entry(guests[5], Outcome.SAVED))
    reasons = {e.guest.name: (e.actions[0], e.reason) for e in plan_boot(guests, p, record).entries}
    assert reasons == {
        "up": (Action.SKIP, "already running"),
        "never-saved": (Action.SKIP, "autostart never; its saved state is kept for a manual start"),
        "never-off": (Action.SKIP, "autostart never"),
        "always-saved": (Action.RESUME, "autostart always; resumes its saved state"),
        "always-off": (Action.START, "autostart always; no saved state, boots fresh"),
        "was-saved": (Action.RESUME, "if-running: was running at the last shutdown (saved); resumes"),
        "not-saved": (Action.SKIP, "if-running: was not running at the last shutdown (it has a saved image, kept)"),
        "not-off": (Action.SKIP, "if-running: was not running at the last shutdown"),
    }
    without = {e.guest.name: (e.actions[0], e.reason) for e in plan_boot(guests[5:], p, None).entries}
    assert without == {
        "was-saved": (Action.RESUME, "if-running: has a saved image, so it was running when saved; resumes"),
        "not-saved": (Action.RESUME, "if-running: has a saved image, so it was running when saved; resumes"),
        "not-off": (Action.SKIP, "if-running: no record and no saved image"),
    }


def test_a_peer_is_asked_only_of_the_guests_whose_own_rule_lists_it(tmp_path):
    a, b, up = guest("a"), guest("b"), guest("up", GuestState.RUNNING)
    record = read_back(tmp_path, *(entry(g, Outcome.MIGRATED, peer=PEER) for g in (a, b, up)))
    p = policy(f'version: 1\nguests:\n  - match: {{name: "[au]*"}}\n    migrate: {{peers: ["{PEER}"]}}\n')
    assert peer_questions([a, b, up], p, record) == {PEER: [a.uuid]}
    assert peer_questions([a], p, None) == {}


def test_the_boot_plan_names_each_guests_managed_image_and_its_policy(tmp_path):
    local = "qemu:///system"
    g, t = guest("g", image=True, uri=local), guest("t", persistent=False, uri=local)
    p = policy(f'version: 1\nconnections: ["{local}"]\n')
    record = read_back(tmp_path, entry(g, Outcome.SAVED), entry(t, Outcome.SAVED_TO_FILE, image=save_file(tmp_path, t)))
    plan = plan_boot([g], p, record)
    entries = by_name(plan)
    assert entries["g"].managed_image == managed_image_path(local, "g")
    assert entries["g"].managed_image.endswith("/g.save")
    assert entries["t"].managed_image is None
    assert plan.policy_source == p.source == "policy.yaml"


def test_a_guest_left_off_waits_for_nobody():
    p = policy("version: 1\nguests:\n  - match: {name: a}\n    after: [b]\n    autostart: never\n"
               "  - match: {name: c}\n    after: [b]\n")
    a, b, c = (guest(n, image=True) for n in "abc")
    entries = by_name(plan_boot([a, b, c], p, None))
    assert entries["a"].actions == (Action.SKIP,) and entries["a"].wait_for == ()
    assert entries["c"].wait_for == (b.key,)


def test_a_restore_on_a_connection_that_offers_no_channels_reads_in_one_stream(tmp_path):
    t = guest("t", persistent=False, memory_kib=4 * GiB_KIB)
    record = read_back(tmp_path, entry(t, Outcome.SAVED_TO_FILE, image=save_file(tmp_path, t)))
    for channels in (None, {}, {OTHER: ChannelSupport(True)}):
        [e] = plan_boot([], policy(CHANNELS), record, channels=channels, cores=8).entries
        assert e.actions == (Action.RESTORE,) and e.save_channels == 1


def test_restores_share_this_machines_cores_when_none_are_given(tmp_path):
    t = guest("t", persistent=False, memory_kib=4 * GiB_KIB)
    record = read_back(tmp_path, entry(t, Outcome.SAVED_TO_FILE, image=save_file(tmp_path, t)))
    [e] = plan_boot([], policy(CHANNELS), record, channels={URI: ChannelSupport(True)}).entries
    assert e.save_channels == max(1, min(4, os.cpu_count() or 1))


# -- the shutdown plan: what each entry names ----------------------------------------------------


def test_a_connection_without_a_measured_rate_is_planned_at_the_built_in_one():
    p = policy(f'version: 1\nconnections: ["{URI}", "{OTHER}"]\n')
    guests = [guest("a", GuestState.RUNNING), guest("b", GuestState.RUNNING, uri=OTHER)]
    plan = plan_shutdown(guests, p, state_dir=Path("/s"), rates={OTHER: SaveRate(5e8, "measured")})
    assert plan.rates == {URI: SaveRate(DEFAULT_SAVE_THROUGHPUT, "built-in default"), OTHER: SaveRate(5e8, "measured")}


def test_a_persistent_guests_save_names_the_managed_image_libvirt_writes():
    g = guest("vm", GuestState.RUNNING, uri="qemu:///system")
    [e] = plan_shutdown([g], policy('version: 1\nconnections: ["qemu:///system"]\n'), state_dir=Path("/s")).entries
    assert e.actions[0] is Action.SAVE and e.image is None
    assert e.managed_image == managed_image_path("qemu:///system", "vm") == "/var/lib/libvirt/qemu/save/vm.save"


def test_a_guest_that_does_not_run_keeps_its_order_and_does_nothing():
    p = policy("version: 1\nguests:\n  - match: {name: 'off*'}\n    order: 3\n")
    plan = plan_shutdown([guest("off1"), guest("up", GuestState.RUNNING)], p, state_dir=Path("/s"))
    assert [(e.guest.name, e.order, e.actions, e.reason) for e in plan.entries] == [
        ("off1", 3, (Action.SKIP,), "shut off: nothing to do"),
        ("up", 0, (Action.SAVE, Action.SHUTDOWN, Action.POWEROFF),
         "running; on_shutdown chain save -> shutdown -> poweroff")]


def test_saves_share_this_machines_cores_when_none_are_given():
    g = guest("big", GuestState.RUNNING, memory_kib=4 * GiB_KIB)
    [e] = plan_shutdown([g], policy(CHANNELS), state_dir=Path("/s"), channels={URI: ChannelSupport(True)}).entries
    assert e.save_channels == max(1, min(4, os.cpu_count() or 1))


def test_saves_take_one_core_where_this_machine_cannot_count_its_own(monkeypatch):
    # A mock: no real machine here hides its CPU count, as os.cpu_count() allows (None).
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    g = guest("big", GuestState.RUNNING, memory_kib=4 * GiB_KIB)
    [e] = plan_shutdown([g], policy(CHANNELS), state_dir=Path("/s"), channels={URI: ChannelSupport(True)}).entries
    assert e.save_channels == 1


# -- the plan as JSON (``mgsave plan --json``): every key -----------------------------------------


def test_the_shutdown_plan_as_json_says_every_decision_and_where_each_setting_came_from():
    local, peer = "qemu:///system", "qemu+tls://p1.example.org/system"
    p = policy(f'version: 1\nconnections: ["{local}"]\nlimits: {{max_parallel_saves: 3, max_parallel_starts: 4, '
               'max_parallel_migrations: 2, shutdown_deadline: 300, start_delay: 5}\ndefaults:\n  shutdown_timeout: 30\n'
               'guests:\n  - name: dbs\n    match: {name: db}\n    order: 3\n')
    db = guest("db", GuestState.RUNNING, uri=local)
    off = guest("off", image=True, uri=local, memory_kib=2048)
    plan = plan_shutdown([db, off], p, state_dir=Path("/s"), rates={local: SaveRate(2**28, "measured")},
                         deadline=200.0, peers={peer: PeerFacts(peer, False, why="refused")},
                         host_shutdown=HostShutdown(ShutdownKind.POWEROFF, "logind said"))
    d = plan.to_dict()
    settings = [g.pop("settings") for g in d["guests"]]
    assert d == {
        "pass": "shutdown", "policy": "policy.yaml",
        "limits": {"max_parallel_saves": 3, "max_parallel_starts": 4, "max_parallel_migrations": 2,
                   "shutdown_deadline_seconds": 300.0, "start_delay_seconds": 5.0},
        "deadline_seconds": 200.0,
        "save_rates": {local: {"bytes_per_second": 2**28, "source": "measured"}},
        "warnings": [],
        "guests": [
            {"connection": local, "name": "db", "uuid": db.uuid, "state": "running", "persistent": True,
             "has_saved_image": False, "memory_bytes": 2**30, "actions": ["save", "shutdown", "poweroff"],
             "first_choice": "save", "reason": "running; on_shutdown chain save -> shutdown -> poweroff", "order": 3,
             "wait_for": [], "estimated_save_end_seconds": 4.0, "save_dropped_because": None, "save_file_path": None,
             "managed_image_path": "/var/lib/libvirt/qemu/save/db.save", "notes": [], "save_channels": 1,
             "image_format": "libvirt",
             "image_format_why": "libvirt's own format (raw, unless save_image_format in qemu.conf says "
                                 "otherwise): image_format libvirt (built-in: the default until "
                                 "measurements justify another)",
             "peer": None, "chain_from": "on_shutdown", "will_not_resume": None,
             "changed_since_save": None},
            {"connection": local, "name": "off", "uuid": off.uuid, "state": "shut-off", "persistent": True,
             "has_saved_image": True, "memory_bytes": 2048 * 1024, "actions": ["skip"], "first_choice": "skip",
             "reason": "shut off: nothing to do", "order": 0, "wait_for": [], "estimated_save_end_seconds": None,
             "save_dropped_because": None, "save_file_path": None, "managed_image_path": None, "notes": [],
             "save_channels": 1, "image_format": None, "image_format_why": None, "peer": None,
             "chain_from": None, "will_not_resume": None, "changed_since_save": None},
        ],
        "peers": {peer: {"uri": peer, "reachable": False, "why": "refused", "hypervisor_type": None,
                         "free_bytes": None}},
        "host_shutdown": {"kind": "poweroff", "why": "logind said"},
    }
    assert settings[0]["order"] == {"value": 3, "from": "guests[0] (dbs)", "line": 7}
    assert settings[0]["shutdown_timeout"] == settings[1]["shutdown_timeout"] == {"value": 30.0, "from": "defaults",
                                                                                   "line": 4}
    assert settings[1]["order"] == {"value": 0, "from": "built-in", "line": None}
    assert settings[1]["autostart"] == {"value": "if-running", "from": "built-in", "line": None}
    assert set(settings[0]) == set(plan.entries[0].effective.sources)


def test_a_boot_plan_as_json_has_no_rates_peers_or_kind_of_shutdown_and_names_whom_a_guest_waits_for():
    p = policy("version: 1\nguests:\n  - match: {name: app}\n    after: [db]\n")
    app, db = guest("app", image=True), guest("db", image=True)
    d = plan_boot([app, db], p, None).to_dict()
    assert (d["pass"], d["policy"], d["deadline_seconds"], d["save_rates"], d["peers"], d["host_shutdown"]) == (
        "boot", "policy.yaml", None, {}, {}, None)
    assert {g["name"]: g["wait_for"] for g in d["guests"]} == {"db": [], "app": [{"connection": URI, "uuid": db.uuid}]}
