"""Whether a stop of mgsave.service runs the shutdown pass (libmgsave.hostdown.decide).

The facts below are what systemd 252 and logind said in the systemd container at each kind of
stop (docs/SYSTEMD.md); tests/test_systemd_unit_stop.py checks the same against the real thing.
"""

from __future__ import annotations

import pytest

from libmgsave.hostdown import HostFacts, Job, Rearm, Verdict, decide

ARMING_STOP = Job("mgsave.service", "stop")
QUIET = dict(system_state="running", jobs=(ARMING_STOP,), preparing_for_shutdown=False, unit_file_state="enabled")


def facts(**changes) -> HostFacts:
    return HostFacts(**{**QUIET, **changes})


@pytest.mark.parametrize("target", ["poweroff.target", "reboot.target", "halt.target", "kexec.target",
                                    "soft-reboot.target"])
def test_a_queued_shutdown_runs_the_pass(target):
    # systemctl poweroff without mgsave watch: systemd queues the target and is "stopping".
    seen = facts(system_state="stopping", jobs=(Job(target, "start"), Job("shutdown.target", "start"), ARMING_STOP,
                                                Job("machine.slice", "stop")))
    assert decide(seen).verdict is Verdict.HOST_GOING_DOWN and decide(seen).runs_pass
    # The target's start job alone is enough, whatever the manager's state says.
    assert decide(facts(jobs=(Job(target, "start"), ARMING_STOP))).verdict is Verdict.HOST_GOING_DOWN


def test_logind_s_announcement_runs_the_pass():
    # mgsave watch stops the unit in logind's delay phase: systemd has queued nothing yet.
    decision = decide(facts(preparing_for_shutdown=True))
    assert decision.verdict is Verdict.HOST_GOING_DOWN and "logind" in decision.why


@pytest.mark.parametrize("unit", ["virt-guest-shutdown.target", "machine.slice", r"machine-qemu\x2d1\x2dg1.scope"])
def test_the_guests_about_to_be_stopped_run_the_pass(unit):
    # systemctl isolate rescue.target: "maintenance", and the guests' target has a stop job.
    decision = decide(facts(system_state="maintenance", jobs=(ARMING_STOP, Job(unit, "stop"))))
    assert decision.verdict is Verdict.GUESTS_STOPPING and decision.runs_pass and unit in decision.why


def test_a_restart_runs_no_pass_and_the_restart_arms_it_again():
    decision = decide(facts(jobs=(Job("mgsave.service", "restart"),)))
    assert decision.verdict is Verdict.NOT_GOING_DOWN and not decision.runs_pass
    assert decision.rearm is Rearm.RESTARTING


def test_a_stop_runs_no_pass_and_a_start_is_queued():
    decision = decide(facts())
    assert decision.verdict is Verdict.NOT_GOING_DOWN and decision.rearm is Rearm.QUEUE_START


@pytest.mark.parametrize("state", ["disabled", "masked", "masked-runtime"])
def test_a_unit_the_admin_disabled_or_masked_is_left_disarmed(state):
    assert decide(facts(unit_file_state=state)).rearm is Rearm.LEFT_DISARMED


def test_starting_a_target_that_does_not_take_the_host_down_is_no_shutdown():
    jobs = (ARMING_STOP, Job("rescue.target", "start"), Job("libvirtd.service", "stop"), Job("poweroff.target", "stop"))
    assert decide(facts(jobs=jobs)).verdict is Verdict.NOT_GOING_DOWN


@pytest.mark.parametrize("unknown", ["system_state", "jobs", "preparing_for_shutdown"])
def test_when_systemd_or_logind_cannot_be_asked_the_pass_runs(unknown):
    decision = decide(facts(**{unknown: None}, problems=(f"{unknown}: no answer",)))
    assert decision.verdict is Verdict.UNKNOWN and decision.runs_pass and "no answer" in decision.why


def test_a_known_shutdown_wins_over_what_could_not_be_asked():
    # At a poweroff the system bus may be on its way down: systemd's word is enough.
    decision = decide(HostFacts(system_state="stopping", problems=("logind: no answer",)))
    assert decision.verdict is Verdict.HOST_GOING_DOWN


def test_nothing_known_runs_the_pass():
    assert decide(HostFacts(problems=("jeepney is not installed",))).verdict is Verdict.UNKNOWN
