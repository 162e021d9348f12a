"""A host without a UPS loads nothing of mgsave's NUT client: not on either pass's path, nor for
``status``, ``check`` and ``plan``. Each command runs in a fresh interpreter (on its own
``test:///default``), which then says which of ``libmgsave.power`` it loaded."""

import os
import subprocess
import sys

import pytest

from tests import nutrig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = """\
import sys
from libmgsave import cli
code = cli.main(sys.argv[1:])
loaded = sorted(name for name in sys.modules if name.startswith("libmgsave.power"))
sys.stderr.write("LOADED " + " ".join(loaded) + "\\n")
"""


def _loaded(tmp_path, policy_text: str, *command: str) -> list[str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text)
    policy.chmod(0o600)
    proc = subprocess.run([sys.executable, "-c", PROBE, "--connect", "test:///default", "--state-dir",
                           str(tmp_path / "state"), "--policy", str(policy), *command],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("LOADED")]
    return line.split()[1:]


@pytest.mark.parametrize("command", [["shutdown"], ["boot"], ["status"], ["check"], ["plan"]])
def test_nothing_of_the_nut_client_is_loaded_without_a_ups(tmp_path, command):
    assert _loaded(tmp_path, "version: 1\n", *command) == []


def test_status_loads_it_when_the_policy_names_a_ups(tmp_path):
    policy = f"version: 1\npower:\n  ups: ups1@127.0.0.1:{nutrig.free_port()}\n"
    assert "libmgsave.power.ups" in _loaded(tmp_path, policy, "status")
