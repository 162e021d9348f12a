# The second tier: the real CLI on libvirt's built-in test driver (see tests/testdriver.py).
import functools
import os
import uuid

import pytest

from libmgsave import cli, conflicts, interrupt, state
from tests.testdriver import URI, hv  # noqa: F401


@pytest.fixture
def quiet_host(tmp_path, monkeypatch):
    """This host's own setup (libvirt-guests enabled, say) is looked for in an empty tree."""
    (tmp_path / "root").mkdir()
    monkeypatch.setattr(conflicts, "host_conflicts", functools.partial(conflicts.host_conflicts, root=tmp_path / "root"))


def policy_runner(tmp_path, capsys, policy: str, *, stderr: bool = False, name: str = "policy.yaml"):
    """``run(*args)``: mgsave on the test driver with ``policy`` (written once, to ``name`` in
    ``tmp_path``), its state in ``run.state_dir``; returns (exit code, standard output), and
    standard error after them with ``stderr``."""
    path = tmp_path / name
    path.write_text(policy)
    os.chmod(path, 0o644)
    state_dir = tmp_path / "state"

    def run(*args):
        capsys.readouterr()
        code = cli.main(["--connect", URI, "--state-dir", str(state_dir), "--policy", str(path), *args])
        out, err = capsys.readouterr()
        return (code, out, err) if stderr else (code, out)

    run.state_dir = state_dir
    return run


@pytest.fixture
def reboot(tmp_path, monkeypatch):
    """The kernel's boot ID as mgsave reads it: each call is a new boot of the host."""
    boot_id = tmp_path / "boot_id"
    monkeypatch.setattr(state.records, "BOOT_ID_FILE", str(boot_id))

    def new_boot():
        interrupt.reset()
        boot_id.write_text(f"{uuid.uuid4()}\n")

    new_boot()
    return new_boot
