"""How a command is reached and how it exits: every command has its entry in ``cli.DISPATCH``,
loads only its own action, gets read-only global options, and exits with the code its result
says (one protocol, whatever the command); a run's ``PassLog`` reads back what it was told."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from libmgsave import cli
from libmgsave.actions import DONE
from libmgsave.actions.check import CheckResult
from libmgsave.actions.images import ImagesResult
from libmgsave.actions.passes import StoppedEarly
from libmgsave.actions.plan import PlanResult
from libmgsave.context import Context, PassLog
from libmgsave.errors import ExitCode, Problem
from libmgsave.outcomes import PassResult
from libmgsave.plan import PassKind
from libmgsave.state import StateDir

ROOT = Path(__file__).resolve().parents[2]


def test_every_command_of_the_parser_has_its_entry_in_the_dispatch_table():
    action = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert set(cli.DISPATCH) == set(action.choices)


def test_a_command_imports_its_own_action_and_no_other(tmp_path):
    """Start-up stays light: a pass loads nothing of the other commands."""
    code = ("import sys; from libmgsave import cli; cli.main(sys.argv[1:]); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('libmgsave.actions.'))), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, "sample-policy"], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    assert out.stderr.split() == ["libmgsave.actions.sample_policy"]


def test_the_global_options_are_read_only(tmp_path):
    ctx = Context(command="status", policy_path="/nonexistent", policy_explicit=False, state=StateDir(tmp_path))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.json = True


def test_a_pass_log_reads_back_its_warnings_in_order_and_whether_bookkeeping_failed():
    log = PassLog()
    log.warn("one")
    assert not log.bookkeeping_failed
    log.bookkeeping_failed_because("the record could not be written")
    log.bookkeeping_failed_because("one", once=True)  # said already: not again
    log.gather(lambda warnings: warnings.append("from a reader"))
    assert log.warnings == ["one", "the record could not be written", "from a reader"]
    assert log.bookkeeping_failed
    log.warnings.clear()  # a copy: the log itself is told only through its methods
    assert len(log.warnings) == 3


def _pass(**extra) -> PassResult:
    return PassResult(PassKind.SHUTDOWN, False, 0.0, 1.0, [], [], **extra)


@pytest.mark.parametrize(("result", "code"), [
    (DONE, ExitCode.OK),
    (CheckResult((), ()), ExitCode.OK),
    (CheckResult((Problem("policy.yaml", 1, 1, "", "bad"),), ()), ExitCode.BAD_INPUT),
    (PlanResult(policy_broken=False, unknown_guests=("nosuch",)), ExitCode.BAD_INPUT),
    (PlanResult(policy_broken=False, unknown_guests=()), ExitCode.OK),
    (ImagesResult(), ExitCode.OK),
    (ImagesResult(unknown=("x",)), ExitCode.BAD_INPUT),
    (ImagesResult(refused="an insecure state directory"), ExitCode.BAD_INPUT),
    (ImagesResult(failed=("x",)), ExitCode.GUEST_FAILED),
    (StoppedEarly(PassKind.BOOT, "SIGTERM"), 143),
    (_pass(), ExitCode.OK),
    (_pass(bookkeeping_failed=True), ExitCode.GUEST_FAILED),
    (_pass(unreachable=("qemu:///system",)), ExitCode.GUEST_FAILED),
    (_pass(bookkeeping_failed=True, interrupted="SIGINT"), 130),
])
def test_every_result_says_its_exit_code(result, code):
    assert result.exit_code() == code
