"""The policy is read as YAML 1.2 (core schema): no base-60 numbers, no yes/no booleans, and the
problems that follow from it are located and say what to write instead."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from libmgsave.policy import OnResumeFailure, ShutdownStep
from libmgsave.policyfile import load_policy
from libmgsave.policyfile.marks import read_document
from libmgsave.policyfile.schema_errors import policy_schema
from libmgsave.policyfile.settings import DURATION_PATTERN, parse_duration
from tests.unit.test_policy_load import only_problem, write


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize(("text", "value"), [
    ("1:30", "1:30"), ("010", 10), ("0o17", 15), ("0x1f", 31), ("yes", "yes"), ("off", "off"),
    ("On", "On"), ("true", True), ("False", False), ("~", None), ("null", None), ("2026-12-02", "2026-12-02"),
    ("1.5", 1.5), ("-3", -3), (".inf", float("inf")), ("1_000", "1_000"), ("'1:30'", "1:30"),
])
def test_plain_values_are_read_as_yaml_1_2(text, value):
    document, _ = read_document(f"key: {text}\n", "p.yaml")
    assert document == {"key": value}


def test_the_line_marks_still_work():
    document, marks = read_document("a: 1\nb:\n  - yes\n", "p.yaml")
    assert document == {"a": 1, "b": ["yes"]}
    assert marks.value_marks[("b", 0)] == (3, 5) and marks.key_marks[("b",)] == (2, 1)


def test_a_yes_where_a_boolean_is_wanted_says_use_true_or_false(policy_dir):
    problem = only_problem(write(policy_dir, "version: 1\ndefaults:\n  sync_time: yes\n"))
    assert (problem.line, problem.path) == (3, "defaults.sync_time")
    assert "true or false" in problem.message and "use true or false" in problem.hint


def test_off_is_a_string_so_a_step_named_off_is_an_unknown_step(policy_dir):
    problem = only_problem(write(policy_dir, "version: 1\ndefaults:\n  on_shutdown: [off]\n"))
    assert problem.path == "defaults.on_shutdown[0]" and "'off'" in problem.message


def test_a_base_60_duration_is_refused_with_a_hint(policy_dir):
    problem = only_problem(write(policy_dir, "version: 1\ndefaults:\n  save_timeout: 1:30\n"))
    assert (problem.line, problem.path) == (3, "defaults.save_timeout")
    assert "base-60" in problem.hint and "1m 30s" in problem.hint and "quote it" in problem.hint


def test_a_number_where_a_string_is_wanted_says_quote_it(policy_dir):
    problem = only_problem(write(policy_dir, "version: 1\ndefaults:\n  after: [1.10]\n"))
    assert problem.path == "defaults.after[0]" and problem.hint == 'quote it, as in "1.10", to keep it as written'


def test_systemd_durations_load(policy_dir):
    policy = load_policy(write(policy_dir, """\
        version: 1
        limits: {shutdown_deadline: 1h 30min, start_delay: 2 sec}
        defaults: {save_timeout: 10 minutes, shutdown_timeout: 2m, ready: {agent: 1 hr},
                   on_shutdown: [save, poweroff], on_resume_failure: boot-fresh}
        """))
    assert policy.limits.shutdown_deadline == 5400.0 and policy.limits.start_delay == 2.0
    assert policy.defaults["save_timeout"] == 600.0 and policy.defaults["ready"].seconds == 3600.0
    assert policy.defaults["on_shutdown"] == (ShutdownStep.SAVE, ShutdownStep.POWEROFF)
    assert policy.defaults["on_resume_failure"] is OnResumeFailure.BOOT_FRESH


def test_more_than_seven_days_in_systemd_units_is_refused(policy_dir):
    problem = only_problem(write(policy_dir, "version: 1\ndefaults:\n  save_timeout: 1w 1s\n"))
    assert "at most 7 days" in problem.message


def test_the_schema_and_the_parser_spell_a_duration_alike():
    defs = policy_schema()["$defs"]
    for name in ("duration", "duration_or_zero"):
        patterns = [alt["pattern"] for alt in defs[name]["anyOf"] if "pattern" in alt]
        assert patterns == [DURATION_PATTERN]
    for text in ("90", "1.5m", "1h30m", "1h 30min", "2 days", "1w", "5ms", "1:30", "90 5m", "h", "1 month"):
        by_parser = True
        try:
            parse_duration(text)
        except ValueError:
            by_parser = False
        assert bool(re.search(DURATION_PATTERN, text)) == by_parser, text
