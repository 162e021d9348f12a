"""The planner is pure: guests and a policy in, decisions out. Guests here are built by hand."""

import uuid
from pathlib import Path

import pytest

from libmgsave import state
from libmgsave.history import RecordedPass
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.outcomes import Outcome
from libmgsave.plan import FILES_ROOM, Action, SaveRate, plan_boot, plan_shutdown
from libmgsave.policyfile import parse_policy

STATE_DIR = Path("/nonexistent/state")
URI = "test:///default"
GiB_KIB = 1024 * 1024


def guest(name, state_=GuestState.RUNNING, *, persistent=True, image=False, memory_kib=GiB_KIB, uri=URI):
    return GuestInfo(connection=uri, name=name, uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                     state=state_, persistent=persistent, has_managed_save=image, memory_kib=memory_kib)


def policy(text: str = "version: 1\n"):
    return parse_policy(text, "policy.yaml")


def by_name(plan):
    return {e.guest.name: e for e in plan.entries}


def test_default_chain_for_running_guests_and_nothing_for_stopped_ones():
    plan = plan_shutdown([guest("a"), guest("b", GuestState.SHUTOFF), guest("p", GuestState.PAUSED)],
                         policy(), state_dir=STATE_DIR)
    entries = by_name(plan)
    assert entries["a"].actions == (Action.SAVE, Action.SHUTDOWN, Action.POWEROFF)
    assert entries["p"].actions == (Action.SAVE, Action.SHUTDOWN, Action.POWEROFF)
    assert entries["b"].skipped
    assert {e.guest.name for e in plan.active} == {"a", "p"}


def test_transient_guests_are_saved_to_a_file_in_the_state_directory():
    g = guest("t", persistent=False)
    entry = by_name(plan_shutdown([g], policy(), state_dir=STATE_DIR))["t"]
    assert entry.actions[0] is Action.SAVE_TO_FILE
    assert entry.image == str(STATE_DIR / "images" / f"{g.uuid}.save")


def test_shutdown_runs_higher_order_first_and_dependents_before_what_they_need():
    p = policy("""
version: 1
guests:
  - match: {name: "db*"}
    order: 10
  - match: {name: app}
    order: 10
    after: [db1]
""")
    plan = plan_shutdown([guest("dns"), guest("db1"), guest("app")], p, state_dir=STATE_DIR)
    names = [e.guest.name for e in plan.entries]
    assert names.index("dns") > names.index("db1")
    assert names.index("dns") > names.index("app")
    entries = by_name(plan)
    # db1 is stopped only after app, which is after db1
    assert entries["db1"].wait_for == (entries["app"].key,)
    assert entries["app"].wait_for == ()


def test_after_a_higher_order_guest_pulls_the_dependent_into_that_group():
    p = policy("""
version: 1
guests:
  - match: {name: web}
    order: 0
    after: [db]
  - match: {name: db}
    order: 20
""")
    boot = plan_boot([guest("web", GuestState.SHUTOFF, image=True), guest("db", GuestState.SHUTOFF, image=True)],
                     p, None)
    entries = by_name(boot)
    assert entries["web"].order == 20
    assert entries["web"].wait_for == (entries["db"].key,)
    assert [e.guest.name for e in boot.entries] == ["db", "web"]


def test_after_cycles_are_broken_with_a_warning_so_no_guest_waits_forever():
    p = policy("""
version: 1
guests:
  - match: {name: a}
    after: [b]
  - match: {name: b}
    after: [a]
""")
    plan = plan_shutdown([guest("a"), guest("b")], p, state_dir=STATE_DIR)
    assert any("cycle" in w for w in plan.warnings)
    entries = by_name(plan)
    # at most one direction survives
    assert not (entries["a"].wait_for and entries["b"].wait_for)


def test_unknown_after_names_are_warnings():
    p = policy("version: 1\ndefaults:\n  after: [ghost]\n")
    plan = plan_shutdown([guest("a")], p, state_dir=STATE_DIR)
    assert any("ghost" in w for w in plan.warnings)


def test_deadline_sends_saves_that_cannot_fit_to_the_next_step_by_priority():
    # 4 guests x 1 GiB at 100 MB/s: ~10.7 s each; 40 s deadline - 10 s reserve fits two saves.
    p = policy("""
version: 1
limits: {shutdown_deadline: 40}
guests:
  - match: {name: important}
    priority: 5
""")
    guests = [guest("a"), guest("b"), guest("c"), guest("important")]
    plan = plan_shutdown(guests, p, state_dir=STATE_DIR, rates={URI: SaveRate(100e6, "measured")})
    entries = by_name(plan)
    saving = [e.guest.name for e in plan.entries if e.actions[0] is Action.SAVE]
    assert saving == ["important", "a"]
    for name in ("b", "c"):
        assert entries[name].actions == (Action.SHUTDOWN, Action.POWEROFF)
        assert any("deadline" in n for n in entries[name].notes)
    assert entries["a"].estimate_seconds == pytest.approx(2 * GiB_KIB * 1024 / 100e6)


def test_each_connection_is_estimated_at_its_own_rate():
    # 40 s - 10 s reserve: at 100 MB/s two 1 GiB saves fit on a connection, at 1 GB/s all four
    other = "qemu+ssh://peer/system"
    guests = [guest(f"slow{i}") for i in range(4)] + [guest(f"fast{i}", uri=other) for i in range(4)]
    rates = {URI: SaveRate(100e6, "measured here"), other: SaveRate(1e9, "measured there")}
    plan = plan_shutdown(guests, policy("version: 1\nlimits: {shutdown_deadline: 40}\n"), state_dir=STATE_DIR,
                         rates=rates)
    saving = {e.guest.name for e in plan.entries if e.actions[0] is Action.SAVE}
    assert saving == {"slow0", "slow1", "fast0", "fast1", "fast2", "fast3"}
    assert plan.to_dict()["save_rates"][other] == {"bytes_per_second": 1e9, "source": "measured there"}
    # a connection nobody measured gets the built-in default, and says so
    default = plan_shutdown([guest("a")], policy(), state_dir=STATE_DIR).rates[URI]
    assert default.bytes_per_second == 200e6 and "built-in default" in default.source


def test_saves_that_do_not_fit_the_free_space_go_to_the_next_step():
    guests = [guest("a"), guest("b"), guest("t", persistent=False)]
    room = {URI: int(1.5 * GiB_KIB * 1024), FILES_ROOM: 10}
    entries = by_name(plan_shutdown(guests, policy(), state_dir=STATE_DIR, room=room))
    assert entries["a"].actions[0] is Action.SAVE
    assert entries["b"].actions[0] is Action.SHUTDOWN
    assert entries["t"].actions[0] is Action.SHUTDOWN
    assert entries["t"].image is None
    assert any("free" in n for n in entries["b"].notes)


def test_a_single_step_chain_is_never_emptied_by_the_deadline():
    p = policy("version: 1\nlimits: {shutdown_deadline: 11}\ndefaults: {on_shutdown: [save]}\n")
    entry = plan_shutdown([guest("a")], p, state_dir=STATE_DIR, rates={URI: SaveRate(1.0, "slow")}).entries[0]
    assert entry.actions == (Action.SAVE,)


def _record(*guests_and_outcomes):
    return {"guests": {state.guest_record_key(g.connection, g.uuid):
                       {"name": g.name, "uuid": g.uuid, "connection": g.connection, "outcome": outcome}
                       for g, outcome in guests_and_outcomes}}


BOOT_POLICY = """
version: 1
guests:
  - match: {name: "always*"}
    autostart: always
  - match: {name: "never*"}
    autostart: never
"""


def test_boot_follows_autostart_and_the_record():
    was_running = guest("ifr-was", GuestState.SHUTOFF, image=True)
    shut_down = guest("ifr-shut", GuestState.SHUTOFF)
    not_running = guest("ifr-not", GuestState.SHUTOFF, image=True)
    always_fresh = guest("always-fresh", GuestState.SHUTOFF)
    always_saved = guest("always-saved", GuestState.SHUTOFF, image=True)
    never = guest("never-saved", GuestState.SHUTOFF, image=True)
    running = guest("already", GuestState.RUNNING)
    record = _record((was_running, "saved"), (shut_down, "shut-down"), (never, "saved"))
    plan = plan_boot([was_running, shut_down, not_running, always_fresh, always_saved, never, running],
                     policy(BOOT_POLICY), RecordedPass.from_dict(record))
    actions = {name: e.actions[0] for name, e in by_name(plan).items()}
    assert actions == {
        "ifr-was": Action.RESUME,
        "ifr-shut": Action.START,
        "ifr-not": Action.SKIP,
        "always-fresh": Action.START,
        "always-saved": Action.RESUME,
        "never-saved": Action.SKIP,
        "already": Action.SKIP,
    }
    assert "kept" in by_name(plan)["never-saved"].reason


def test_boot_without_a_record_resumes_guests_that_have_an_image():
    plan = plan_boot([guest("x", GuestState.SHUTOFF, image=True), guest("y", GuestState.SHUTOFF)], policy(), None)
    actions = {e.guest.name: e.actions[0] for e in plan.entries}
    assert actions == {"x": Action.RESUME, "y": Action.SKIP}
    assert plan.warnings


def test_boot_restores_transient_guests_from_their_files():
    t = guest("t", persistent=False)
    record = _record((t, Outcome.SAVED_TO_FILE))
    record["guests"][state.guest_record_key(t.connection, t.uuid)]["image"] = "/x/t.save"
    plan = plan_boot([], policy(), RecordedPass.from_dict(record))
    (entry,) = plan.entries
    assert entry.actions == (Action.RESTORE,)
    assert entry.image == "/x/t.save"


def test_boot_starts_in_ascending_order():
    p = policy("version: 1\nguests:\n  - match: {name: late}\n    order: 5\n  - match: {name: early}\n    order: -5\n")
    plan = plan_boot([guest(n, GuestState.SHUTOFF, image=True) for n in ("late", "mid", "early")], p, None)
    assert [e.guest.name for e in plan.entries] == ["early", "mid", "late"]


def test_plan_to_dict_names_where_each_setting_came_from():
    p = policy("version: 1\ndefaults: {shutdown_timeout: 30}\nguests:\n  - name: dbs\n    match: {name: a}\n    order: 3\n")
    d = plan_shutdown([guest("a")], p, state_dir=STATE_DIR).to_dict()
    settings = d["guests"][0]["settings"]
    assert settings["order"] == {"value": 3, "from": "guests[0] (dbs)", "line": 4}
    assert settings["shutdown_timeout"]["from"] == "defaults"
    assert settings["autostart"]["from"] == "built-in"
