"""A pass on a policy validated before (its bytes unchanged) imports neither the YAML reader nor
the JSON Schema validator: they took most of a pass's start-up. Each command runs in a fresh
interpreter (on its own ``test:///default``), which then says which of them it loaded."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ("yaml", "jsonschema", "referencing", "urllib.request", "libmgsave.timeline")
PROBE = f"""\
import sys
from libmgsave import cli
code = cli.main(sys.argv[1:])
loaded = sorted(name for name in {HEAVY!r} if name in sys.modules)
sys.stderr.write("LOADED " + " ".join(loaded) + "\\n")
sys.exit(code)
"""
POLICY = "version: 1\ndefaults: {autostart: always}\nguests:\n  - match: {name: test}\n    order: 1\n"


def _loaded(tmp_path, *command: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, "--connect", "test:///default", "--state-dir",
                           str(tmp_path / "state"), "--policy", str(tmp_path / "policy.yaml"), *command],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("LOADED")]
    return line.split()[1:]


@pytest.fixture
def policy(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("command", [["shutdown"], ["boot"], ["shutdown", "--dry-run"]])
def test_a_pass_on_an_unchanged_policy_validates_nothing(tmp_path, policy, command):
    assert {"yaml", "jsonschema"} <= set(_loaded(tmp_path, *command))  # the first validates and keeps it
    assert _loaded(tmp_path, *command) == []


def test_a_changed_policy_is_validated_again(tmp_path, policy):
    _loaded(tmp_path, "boot")
    policy.write_text(POLICY.replace("order: 1", "order: 2"))
    assert "jsonschema" in _loaded(tmp_path, "boot")
    assert _loaded(tmp_path, "boot") == []


def test_a_pass_after_check_validates_nothing(tmp_path, policy):
    _loaded(tmp_path, "check")
    assert _loaded(tmp_path, "shutdown") == []
