"""Whatever bytes the policy file holds, load_policy returns a Policy or raises PolicyError: nothing else."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from libmgsave.errors import PolicyError
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.matching import resolve
from libmgsave.policy import MAX_DURATION, SETTING_NAMES, GuestSettings, Policy
from libmgsave.policyfile import load_policy, load_policy_for_pass
from libmgsave.policyfile.core_schema import CoreDumper

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_TEXT = (ROOT / "config" / "policy.sample.yaml").read_text()
# A quick run by default; MGSAVE_FUZZ_EXAMPLES=5000 for a long one.
FUZZ = settings(
    max_examples=int(os.environ.get("MGSAVE_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def policy_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o755)
        yield Path(directory) / "policy.yaml"


def load_bytes(path: Path, data: bytes) -> Policy | None:
    """load_policy on ``data`` written to a real file; None when it raised PolicyError (checked)."""
    path.write_bytes(data)
    path.chmod(0o644)
    try:
        policy = load_policy(str(path))
    except PolicyError as error:
        assert error.problems
        for problem in error.problems:
            assert problem.file == str(path)
            assert problem.message
            assert (problem.line is None) == (problem.column is None)
            assert problem.line is None or problem.line >= 1 and problem.column >= 1
            str(problem)
            problem.to_dict()
        fallback, problems = load_policy_for_pass(str(path), explicit=True)
        assert fallback.is_builtin and problems
        return None
    assert isinstance(policy, Policy) and policy.source == str(path)
    guest = GuestInfo("qemu:///system", "db1", "5d3f1c2e-8a4b-4f2e-9c1d-0e6a7b8c9d0f", GuestState.RUNNING)
    assert isinstance(resolve(policy, guest).settings, GuestSettings)
    return policy


@FUZZ
@given(data=st.binary(max_size=2000))
@example(data=b"\xff\xfe\x00")
@example(data=b"version: 1\x00")
@example(data=b"\xef\xbb\xbfversion: 1\n")
@example(data=b"version: !!binary 'x'\n")
@example(data=b"version: &a [*a]\n")
@example(data=b"version: 1\ndefaults: {order: !!float nan}\n")
def test_arbitrary_bytes(policy_file, data):
    load_bytes(policy_file, data)


@FUZZ
@given(data=st.text(alphabet=st.sampled_from(list("version: 1\n-[]{},&*!|>'\"#%@`?<=~0123456789.abc\t "))))
def test_arbitrary_yaml_punctuation(policy_file, data):
    load_bytes(policy_file, data.encode())


@FUZZ
@given(cut=st.integers(0, len(SAMPLE_TEXT)), length=st.integers(0, 40), insert=st.text(max_size=10))
def test_mutilated_sample(policy_file, cut, length, insert):
    text = SAMPLE_TEXT[:cut] + insert + SAMPLE_TEXT[cut + length :]
    load_bytes(policy_file, text.encode())


KEYS = [
    "version", "connections", "limits", "defaults", "guests", "match", "name", "uuid", "title", "connection",
    "metadata", "namespace", "text", "agent", "max_parallel_saves", "shutdown_deadline", "start_delay",
    *SETTING_NAMES,
]  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["auto", "agent", "none", "save", "always", "90s", "5m", "1h30m", "0s", "db*", "qemu:///system"])
)
STRUCTURES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


@FUZZ
@given(document=st.dictionaries(st.sampled_from(KEYS), STRUCTURES, max_size=6), version=st.sampled_from([1, 1, 2, "1"]))
def test_arbitrary_yaml_structures(policy_file, document, version):
    document = {"version": version, **document}
    load_bytes(policy_file, yaml.dump(document, Dumper=CoreDumper).encode())


DURATIONS = st.floats(min_value=0.5, max_value=MAX_DURATION) | st.sampled_from(["90s", "5m", "1h", "1h30m", "2.5m"])
SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "autostart": st.sampled_from(["always", "if-running", "never"]),
        "on_shutdown": st.lists(st.sampled_from(["save", "shutdown", "poweroff"]), min_size=1, max_size=3, unique=True),
        "order": st.integers(-1000, 1000),
        "priority": st.integers(-1000, 1000),
        "after": st.lists(st.text(alphabet="abdn01-.", min_size=1, max_size=8), max_size=3, unique=True),
        "ready": st.sampled_from(["none", "agent"]) | DURATIONS | st.fixed_dictionaries({"agent": DURATIONS}),
        "save_timeout": DURATIONS,
        "shutdown_timeout": DURATIONS,
        "bypass_cache": st.booleans(),
        "sync_time": st.booleans(),
        "on_resume_failure": st.sampled_from(["boot-fresh", "leave-off"]),
    },
)
GLOBS = st.text(alphabet="abdn01-.*?", min_size=1, max_size=8)
RULES = st.lists(
    st.tuples(st.fixed_dictionaries({}, optional={"name": GLOBS | st.lists(GLOBS, min_size=1, max_size=3)}), SETTINGS),
    max_size=5,
)


@FUZZ
@given(defaults=SETTINGS, rules=RULES)
def test_every_valid_policy_loads_and_resolves(policy_file, defaults, rules):
    guests = [{"match": match, **settings} for match, settings in rules]
    # a single exact name waiting for itself is rightly refused; keep the generator to valid policies
    for rule in guests:
        names = rule["match"].get("name")
        names = [names] if isinstance(names, str) else names or []
        if "after" in rule:
            rule["after"] = [n for n in rule["after"] if n not in names]
    document = {"version": 1, "defaults": defaults, "guests": guests}
    policy = load_bytes(policy_file, yaml.dump(document, Dumper=CoreDumper).encode())
    assert policy is not None
    assert set(policy.defaults) == set(defaults)
    for rule, (_, settings) in zip(policy.rules, rules, strict=True):
        assert set(rule.settings) == set(settings)
        for value in rule.settings.values():
            if isinstance(value, float):
                assert math.isfinite(value)
