"""A reboot is not a power-off: which kind of shutdown it is (``hostdown.shutdown_kind``), the
``on_reboot`` chain it picks (``plan_shutdown``), and the kind kept in the shutdown record.

The facts are those systemd and logind gave in the systemd containers at the stop of
mgsave.service (tests/test_systemd_reboot.py checks the same against the real thing): systemd
257 (Debian 13), in logind's delay phase where ``mgsave watch`` starts the pass, no job queued
yet but logind's ``PreparingForShutdownWithMetadata`` type; systemd 252 (Debian 12), no
metadata, and at the unit's stop a start job for the target of the kind.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from libmgsave import state
from libmgsave.history import EntryError, HostShutdown, RecordedPass, ShutdownKind
from libmgsave.hostdown import HostFacts, Job, decide, shutdown_kind
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.plan import Action, plan_shutdown
from libmgsave.policy import SameChain, ShutdownStep
from libmgsave.policyfile import parse_policy
from libmgsave.errors import PolicyError
from libmgsave.state.writer import write_json_atomic

ARMING_STOP = Job("mgsave.service", "stop")
# systemd 257, logind's delay phase (the watch stopped the unit): only the unit's own stop job.
IN_DELAY_PHASE = dict(system_state="running", jobs=(ARMING_STOP,), preparing_for_shutdown=True,
                      unit_file_state="enabled")
STATE_DIR = Path("/nonexistent/state")


def stopping_for(target: str) -> HostFacts:
    """systemd 252 at the unit's stop during a shutdown: stopping, the target's start job queued."""
    return HostFacts(system_state="stopping", preparing_for_shutdown=False, unit_file_state="enabled",
                     jobs=(Job(target, "start"), Job("shutdown.target", "start"), ARMING_STOP,
                           Job("virt-guest-shutdown.target", "stop"), Job("machine.slice", "stop")))


@pytest.mark.parametrize("said, kind", [("reboot", ShutdownKind.REBOOT), ("poweroff", ShutdownKind.POWEROFF),
                                        ("kexec", ShutdownKind.KEXEC), ("soft-reboot", ShutdownKind.SOFT_REBOOT),
                                        ("halt", ShutdownKind.HALT)])
def test_logind_s_metadata_says_which_kind_before_any_job_is_queued(said, kind):
    facts = HostFacts(**IN_DELAY_PHASE, shutdown_type=said)
    assert decide(facts).runs_pass
    assert shutdown_kind(facts) == HostShutdown(kind, f"logind announced a {said}")


@pytest.mark.parametrize("target, kind", [("reboot.target", ShutdownKind.REBOOT),
                                          ("poweroff.target", ShutdownKind.POWEROFF),
                                          ("kexec.target", ShutdownKind.KEXEC),
                                          ("soft-reboot.target", ShutdownKind.SOFT_REBOOT),
                                          ("halt.target", ShutdownKind.HALT)])
def test_without_metadata_the_queued_target_says_which_kind(target, kind):
    assert shutdown_kind(stopping_for(target)) == HostShutdown(kind, f"{target} has a start job")


def test_logind_s_word_goes_before_the_jobs():
    facts = HostFacts(**{**IN_DELAY_PHASE, "jobs": (Job("poweroff.target", "start"),)}, shutdown_type="reboot")
    assert shutdown_kind(facts).kind is ShutdownKind.REBOOT


def test_systemd_252_in_logind_s_delay_phase_cannot_tell_and_says_why():
    shutdown = shutdown_kind(HostFacts(**IN_DELAY_PHASE))
    assert shutdown.kind is ShutdownKind.UNKNOWN and shutdown.chain == "on_shutdown"
    assert "systemd before 255" in shutdown.why


def test_a_kind_logind_names_that_mgsave_does_not_know_is_unknown():
    shutdown = shutdown_kind(HostFacts(**IN_DELAY_PHASE, shutdown_type="factory-reset"))
    assert shutdown.kind is ShutdownKind.UNKNOWN and "'factory-reset'" in shutdown.why


def test_jobs_that_could_not_be_asked_leave_the_kind_unknown_with_the_problem():
    shutdown = shutdown_kind(HostFacts(problems=("no answer on the system bus within 5 s",)))
    assert shutdown.kind is ShutdownKind.UNKNOWN and "no answer on the system bus" in shutdown.why


def test_only_a_start_job_of_a_kind_s_target_counts():
    facts = HostFacts(**{**IN_DELAY_PHASE, "preparing_for_shutdown": False, "jobs": (Job("reboot.target", "stop"),)})
    assert shutdown_kind(facts).kind is ShutdownKind.UNKNOWN


# -- the policy and the plan -------------------------------------------------------------------

POLICY = """\
version: 1
defaults:
  on_shutdown: [save, shutdown, poweroff]
guests:
  - match: {name: "web*"}
    on_reboot: [shutdown, poweroff]
  - match: {name: "web-keep"}
    on_reboot: on_shutdown
"""


def guest(name: str, state_=GuestState.RUNNING) -> GuestInfo:
    return GuestInfo(connection="test:///default", name=name, uuid=f"00000000-0000-0000-0000-{len(name):012d}",
                     state=state_, persistent=True, memory_kib=1024)


def chains(plan) -> dict[str, tuple[tuple[Action, ...], str | None]]:
    return {e.guest.name: (e.actions, e.chain_from) for e in plan.entries}


def test_a_reboot_runs_the_on_reboot_chain_and_a_poweroff_the_on_shutdown_chain():
    policy = parse_policy(POLICY, "policy.yaml")
    guests = [guest("web-1"), guest("db")]
    reboot = plan_shutdown(guests, policy, state_dir=STATE_DIR,
                           host_shutdown=HostShutdown(ShutdownKind.REBOOT, "logind announced a reboot"))
    assert chains(reboot) == {"web-1": ((Action.SHUTDOWN, Action.POWEROFF), "on_reboot"),
                              "db": ((Action.SAVE, Action.SHUTDOWN, Action.POWEROFF), "on_shutdown")}
    assert reboot.to_dict()["host_shutdown"] == {"kind": "reboot", "why": "logind announced a reboot"}
    assert not reboot.warnings
    poweroff = plan_shutdown(guests, policy, state_dir=STATE_DIR,
                             host_shutdown=HostShutdown(ShutdownKind.POWEROFF, "poweroff.target has a start job"))
    assert chains(poweroff)["web-1"] == ((Action.SAVE, Action.SHUTDOWN, Action.POWEROFF), "on_shutdown")


@pytest.mark.parametrize("kind", [ShutdownKind.KEXEC, ShutdownKind.SOFT_REBOOT])
def test_a_kexec_or_soft_reboot_is_a_reboot(kind):
    plan = plan_shutdown([guest("web-1")], parse_policy(POLICY, "policy.yaml"), state_dir=STATE_DIR,
                         host_shutdown=HostShutdown(kind, "said"))
    assert chains(plan)["web-1"] == ((Action.SHUTDOWN, Action.POWEROFF), "on_reboot")


def test_an_unknown_kind_runs_the_on_shutdown_chain_and_the_plan_says_so():
    plan = plan_shutdown([guest("web-1"), guest("web-keep"), guest("db"), guest("web-off", GuestState.SHUTOFF)],
                         parse_policy(POLICY, "policy.yaml"), state_dir=STATE_DIR)
    assert chains(plan)["web-1"] == ((Action.SAVE, Action.SHUTDOWN, Action.POWEROFF), "on_shutdown")
    assert plan.host_shutdown.kind is ShutdownKind.UNKNOWN
    # only the running guest whose on_reboot chain is its own is named
    assert plan.warnings == ("the kind of shutdown is not known (no kind of shutdown was given): web-1 gets its "
                             "on_shutdown chain, not its on_reboot chain",)


def test_without_an_on_reboot_the_kind_is_not_worth_a_warning():
    plan = plan_shutdown([guest("db")], parse_policy("version: 1\n", "policy.yaml"), state_dir=STATE_DIR)
    assert not plan.warnings and chains(plan)["db"][1] == "on_shutdown"


def test_on_reboot_follows_on_shutdown_by_default_and_a_later_rule_can_say_so_again():
    from libmgsave.matching import resolve
    policy = parse_policy(POLICY + "  - match: {name: db}\n    on_shutdown: [shutdown]\n", "policy.yaml")
    assert resolve(policy, guest("db")).settings.on_reboot is SameChain.ON_SHUTDOWN
    assert resolve(policy, guest("db")).settings.chain_for(ShutdownKind.REBOOT) == (ShutdownStep.SHUTDOWN,)
    keep = resolve(policy, guest("web-keep"))
    assert keep.settings.on_reboot is SameChain.ON_SHUTDOWN and keep.sources["on_reboot"] == "guests[1]"


@pytest.mark.parametrize("value, problem", [
    ("[save, save]", "on_reboot"),
    ("[]", "on_reboot"),
    ("on_reboot", "on_reboot"),
    ("[migrate, save]", "needs peers"),
])
def test_a_wrong_on_reboot_is_a_located_problem(value, problem):
    with pytest.raises(PolicyError) as raised:
        parse_policy(f"version: 1\ndefaults:\n  on_reboot: {value}\n", "policy.yaml")
    assert any(problem in str(p) and p.line == 3 for p in raised.value.problems), raised.value.problems


# -- the record --------------------------------------------------------------------------------


def _record(tmp_path, **header) -> Path:
    path = tmp_path / state.SHUTDOWN_RECORD
    write_json_atomic(path, {"format": state.RECORD_FORMAT, "kind": "shutdown", "version": state.RECORD_VERSION,
                             "started": 1.0, "guests": {}, **header})
    return path


def test_the_kind_round_trips_through_the_record_and_an_older_record_has_none(tmp_path):
    shutdown = HostShutdown(ShutdownKind.SOFT_REBOOT, "soft-reboot.target has a start job")
    data = state.read_record(_record(tmp_path, host_shutdown=shutdown.to_dict()), "shutdown")
    assert RecordedPass.from_dict(data).host_shutdown == shutdown
    older = state.read_record(_record(tmp_path), "shutdown")
    assert RecordedPass.from_dict(older).host_shutdown is None


@pytest.mark.parametrize("bad", ["reboot", {"kind": "sleep", "why": "x"}, {"kind": "reboot"},
                                 {"kind": "reboot", "why": 3}, {"kind": "reboot", "why": "x", "more": 1}])
def test_a_record_with_a_wrong_kind_is_untrusted(tmp_path, bad):
    with pytest.raises(state.RecordError, match="'host_shutdown' is"):
        state.read_record(_record(tmp_path, host_shutdown=bad), "shutdown")
    with pytest.raises(EntryError):
        HostShutdown.from_dict(bad)


# -- what else reads the chains: check's warnings, the peers a plan asks ------------------------


def test_check_warns_about_an_on_reboot_chain_that_can_leave_the_guest_running():
    from libmgsave.conflicts import guest_conflicts
    policy = parse_policy("version: 1\nguests:\n  - match: {name: web*}\n    on_reboot: [save, shutdown]\n",
                          "policy.yaml")
    findings = guest_conflicts(policy, [guest("web-1"), guest("db")])
    assert [(f.message, f.source) for f in findings] == [
        ("web-1: on_reboot does not end with poweroff, so the guest can be left running when every step fails",
         "guests[0]")]


def test_the_peers_of_a_migrate_step_in_on_reboot_are_asked():
    from libmgsave.peers import may_migrate, peers_of
    policy = parse_policy("version: 1\ndefaults:\n  on_reboot: [migrate, save]\n  migrate: {peers: ['qemu+tls://p/system']}\n",
                          "policy.yaml")
    assert may_migrate(policy) and peers_of([guest("db")], policy) == ["qemu+tls://p/system"]


def test_an_evacuation_migrates_whatever_the_on_reboot_chain_and_says_nothing_of_the_kind():
    from libmgsave.actions.evacuate import migrate_only
    policy = migrate_only(parse_policy(POLICY, "policy.yaml"))
    for kind in (ShutdownKind.UNKNOWN, ShutdownKind.REBOOT):
        plan = plan_shutdown([guest("web-1")], policy, state_dir=STATE_DIR, host_shutdown=HostShutdown(kind, "x"))
        assert not plan.warnings and chains(plan)["web-1"][1] == "on_shutdown"
        assert plan.entries[0].first_choice is Action.MIGRATE


def test_an_unknown_kind_names_five_guests_and_counts_the_rest():
    def running(name):
        return GuestInfo(connection="test:///default", name=name, uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                         state=GuestState.RUNNING, persistent=True, memory_kib=1024)
    policy = parse_policy(POLICY, "policy.yaml")
    five = [running(f"web-{n}") for n in range(1, 6)]
    assert plan_shutdown(five, policy, state_dir=STATE_DIR).warnings == (
        "the kind of shutdown is not known (no kind of shutdown was given): web-1, web-2, web-3, web-4, web-5 get "
        "their on_shutdown chain, not their on_reboot chain",)
    six = five + [running("web-6")]
    assert plan_shutdown(six, policy, state_dir=STATE_DIR).warnings == (
        "the kind of shutdown is not known (no kind of shutdown was given): web-1, web-2, web-3, web-4, web-5 and 1 "
        "more get their on_shutdown chain, not their on_reboot chain",)
