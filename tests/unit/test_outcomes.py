"""A guest's severity: ok only when it got its first choice; what a pass's severity adds."""

import uuid
from pathlib import Path

import pytest

from libmgsave.errors import Problem
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.outcomes import GuestResult, Outcome, PassResult, Severity, StepResult
from libmgsave.plan import Action, PassKind, plan_boot, plan_shutdown
from libmgsave.policyfile import parse_policy
from libmgsave.report import render_result

URI = "test:///default"


def running(name="g", memory_kib=262144):
    return GuestInfo(URI, name, str(uuid.uuid5(uuid.NAMESPACE_URL, name)), GuestState.RUNNING,
                     memory_kib=memory_kib)


def entry(chain="[save, shutdown, poweroff]", **plan_args):
    policy = parse_policy(f"version: 1\ndefaults:\n  on_shutdown: {chain}\n", "policy.yaml")
    (planned,) = plan_shutdown([running()], policy, state_dir=Path("/nonexistent"), **plan_args).active
    return planned


def result(planned, outcome, *steps):
    done = [StepResult(action, ok, 0.0, 1.0) for action, ok in steps]
    return GuestResult(planned, outcome, steps=done)


@pytest.mark.parametrize(("chain", "outcome", "steps", "severity"), [
    ("[save, shutdown, poweroff]", Outcome.SAVED, [(Action.SAVE, True)], Severity.OK),
    # the save failed, a later step ran: the guest is off, its memory state is gone
    ("[save, shutdown, poweroff]", Outcome.SHUT_DOWN, [(Action.SAVE, False), (Action.SHUTDOWN, True)],
     Severity.DEGRADED),
    ("[save, shutdown, poweroff]", Outcome.POWERED_OFF,
     [(Action.SAVE, False), (Action.SHUTDOWN, False), (Action.POWEROFF, True)], Severity.DEGRADED),
    # shutting down was the admin's first choice: that is no degradation
    ("[shutdown, poweroff]", Outcome.SHUT_DOWN, [(Action.SHUTDOWN, True)], Severity.OK),
    ("[shutdown, poweroff]", Outcome.POWERED_OFF, [(Action.SHUTDOWN, False), (Action.POWEROFF, True)],
     Severity.DEGRADED),
    ("[poweroff]", Outcome.POWERED_OFF, [(Action.POWEROFF, True)], Severity.OK),
    ("[save, shutdown, poweroff]", Outcome.FAILED, [(Action.SAVE, False)], Severity.FAILED),
    ("[save, shutdown, poweroff]", Outcome.INTERRUPTED, [], Severity.FAILED),
    ("[save, shutdown, poweroff]", Outcome.VANISHED, [], Severity.OK),
])
def test_a_shutdown_guest_is_ok_only_with_its_first_choice(chain, outcome, steps, severity):
    r = result(entry(chain), outcome, *steps)
    assert r.severity is severity
    assert r.ok is (severity is Severity.OK)
    assert r.to_dict()["severity"] == severity.value


def test_a_save_dropped_up_front_makes_the_guest_degraded_and_the_plan_says_so():
    planned = entry(deadline=10.5)  # no time left for a save: straight to shutdown
    assert planned.actions[0] is Action.SHUTDOWN and planned.first_choice is Action.SAVE
    assert planned.to_dict()["first_choice"] == "save"
    r = result(planned, Outcome.SHUT_DOWN, (Action.SHUTDOWN, True))
    assert r.severity is Severity.DEGRADED
    assert (r.to_dict()["first_choice"], r.to_dict()["achieved_by"]) == ("save", "shutdown")
    # a dry run of that plan already knows it
    assert GuestResult(planned, Outcome.PLANNED).severity is Severity.DEGRADED
    assert GuestResult(entry(), Outcome.PLANNED).severity is Severity.OK


def test_at_boot_a_fresh_boot_where_a_resume_was_due_and_a_guest_left_off_are_degraded():
    guest = GuestInfo(URI, "b", "00000000-0000-4000-8000-000000000002", GuestState.SHUTOFF, has_managed_save=True)
    (planned,) = plan_boot([guest], parse_policy("version: 1\n", "policy.yaml"), None).active
    assert planned.first_choice is Action.RESUME
    assert result(planned, Outcome.RESUMED, (Action.RESUME, True)).severity is Severity.OK
    assert result(planned, Outcome.BOOTED_FRESH, (Action.RESUME, False), (Action.START, True)).severity \
        is Severity.DEGRADED
    assert result(planned, Outcome.LEFT_OFF, (Action.RESUME, False)).severity is Severity.DEGRADED
    assert result(planned, Outcome.FAILED, (Action.RESUME, False)).severity is Severity.FAILED


def pass_result(*results, dry_run=False, **extra):
    return PassResult(PassKind.SHUTDOWN, dry_run, 0.0, 1.0, list(results), [], **extra)


def test_a_pass_is_as_bad_as_its_worst_guest_and_a_broken_policy_is_degraded():
    ok = result(entry(), Outcome.SAVED, (Action.SAVE, True))
    degraded = result(entry(), Outcome.SHUT_DOWN, (Action.SAVE, False), (Action.SHUTDOWN, True))
    failed = result(entry(), Outcome.FAILED, (Action.SAVE, False))
    assert pass_result(ok).severity is Severity.OK and pass_result(ok).complete
    assert pass_result(ok, degraded).severity is Severity.DEGRADED
    assert pass_result(ok, degraded, failed).severity is Severity.FAILED
    assert pass_result(ok, unreachable=("qemu:///other",)).severity is Severity.FAILED
    on_defaults = pass_result(ok, policy_problems=(Problem("policy.yaml", 3, 14, "defaults.autostart", "..."),))
    assert on_defaults.severity is Severity.DEGRADED and not on_defaults.complete
    assert on_defaults.to_dict()["on_builtin_defaults"] is True


def test_the_summary_names_degraded_and_failed_guests_and_a_dry_run_says_would():
    degraded = result(entry(), Outcome.SHUT_DOWN, (Action.SAVE, False), (Action.SHUTDOWN, True))
    text = " ".join(render_result(pass_result(degraded)).split())  # lines wrapped at 80 columns
    assert "DEGRADED" in text and "1 of 1 guests are DEGRADED" in text and "shut-down instead of save" in text
    assert "reached" not in text and "first choice" in text
    text = " ".join(render_result(pass_result(GuestResult(entry(deadline=10.5), Outcome.PLANNED),
                                             dry_run=True)).split())
    assert "would be DEGRADED" in text and "shutdown instead of save" in text
    assert "reached" not in text
    text = render_result(pass_result(GuestResult(entry(), Outcome.PLANNED), dry_run=True))
    assert text.splitlines()[-1] == "the 1 guest would get its first choice"
    text = " ".join(render_result(pass_result(result(entry(), Outcome.SAVED, (Action.SAVE, True)),
                                              policy_problems=(Problem("policy.yaml", 1, 1, "", "broken"),))).split())
    assert "ran on the built-in defaults" in text
