"""The systemd unit, the hooks and `make install`/`make uninstall` into a staging root."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "units" / "mgsave.service"
BOOT_UNIT = ROOT / "units" / "mgsave-boot.service"
UNITS = ("mgsave.service", "mgsave-boot.service")
HOOKS = ("mgsave-boot", "mgsave-shutdown")
PREFIX = "/usr/local"


def need(tool: str) -> str:
    """The tool's path; skipped when it is missing, except under CI where it must be there."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing (scripts/setup installs it)")
        pytest.skip(f"{tool} is not installed")
    return path


def verify(*unit_files: Path, man: bool = False) -> None:
    """systemd-analyze verify, treating every complaint about the units as a failure (with
    ``man``, the man pages they name must be installed)."""
    tool = need("systemd-analyze")
    out = subprocess.run([tool, "verify", f"--man={'yes' if man else 'no'}", *map(str, unit_files)],
                         capture_output=True, text=True)
    complaints = [line for line in out.stderr.splitlines() if "mgsave" in line]
    assert out.returncode == 0 and not complaints, out.stderr


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_shipped_unit_verifies(tmp_path):
    hookdir = tmp_path / "hooks"
    hookdir.mkdir()
    for hook in HOOKS:
        shutil.copy(ROOT / "hooks" / hook, hookdir / hook)
    units = []
    for name in UNITS:
        text = (ROOT / "units" / name).read_text()
        text = text.replace("@HOOKDIR@", str(hookdir)).replace("@DOCDIR@", str(tmp_path))
        assert not re.search(r"@[A-Z]+@", "".join(line for line in text.splitlines() if not line.startswith("#")))
        (tmp_path / name).write_text(text)
        units.append(tmp_path / name)
    verify(*units)


def test_arming_unit_keeps_its_promises():
    settings = unit_settings(UNIT.read_text())
    # Active at once and unable to fail: no ExecStart, only the shutdown pass as ExecStop.
    assert settings["Type"] == ["oneshot"] and settings["RemainAfterExit"] == ["yes"]
    assert "ExecStart" not in settings
    assert settings["ExecStop"] == ["@HOOKDIR@/mgsave-shutdown"]
    after = " ".join(settings["After"]).split()
    for unit in ("libvirtd.service", "libvirtd.socket", "virtqemud.service", "virtqemud.socket",
                 "virt-guest-shutdown.target", "libvirt-guests.service"):
        assert unit in after
    assert "virt-guest-shutdown.target" in settings["Requires"]
    # Nothing of libvirt pulled in: the modular daemons conflict with libvirtd.service.
    assert not any("libvirtd" in w or "virtqemud" in w for w in settings.get("Wants", []) + settings["Requires"])
    assert settings["NotifyAccess"] == ["all"]  # ExecStop runs as a control process
    assert 900 < int(settings["TimeoutStopSec"][0]) <= 1800  # the 900 s deadline plus a margin
    assert settings["StateDirectory"] == ["mgsave"]
    assert settings["WantedBy"] == ["multi-user.target"]


def test_boot_unit_keeps_its_promises():
    settings = unit_settings(BOOT_UNIT.read_text())
    # Does not hold up boot, and never touches the arming unit's state.
    assert settings["Type"] == ["exec"]
    assert settings["ExecStart"] == ["@HOOKDIR@/mgsave-boot"]
    assert "ExecStop" not in settings
    assert settings["Requires"] == ["mgsave.service"]
    assert "mgsave.service" in " ".join(settings["After"]).split()
    assert not any("libvirtd" in w or "virtqemud" in w for w in settings.get("Wants", []) + settings["Requires"])
    assert int(settings["RuntimeMaxSec"][0]) > 0  # a hung pass ends
    assert settings["SuccessExitStatus"] == ["143"]  # stopped by a shutdown is not a failure
    assert settings["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("hook, subcommand", [("mgsave-boot", "boot"), ("mgsave-shutdown", "shutdown")])
def test_hook_execs_the_pass_and_keeps_its_exit_code(tmp_path, hook, subcommand):
    fake = tmp_path / "mgsave"
    fake.write_text('#!/bin/sh\necho "$$ $*"\nexit 3\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    proc = subprocess.Popen([str(ROOT / "hooks" / hook), "--debug"], env=env, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=10)
    pid, args = out.strip().split(" ", 1)
    assert args == f"{subcommand} --debug"
    assert int(pid) == proc.pid  # exec'd: systemd sees mgsave itself (exit code, notifications)
    assert proc.returncode == 3


def make(*args: str, destdir: Path, **variables: str) -> subprocess.CompletedProcess:
    need("make")
    command = ["make", "-C", str(ROOT), *args, f"DESTDIR={destdir}", "PIP_ARGS=--no-deps"]
    command += [f"{key}={value}" for key, value in variables.items()]
    out = subprocess.run(command, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """One `make install DESTDIR=...` (with a policy already there), shared by the layout tests."""
    base = tmp_path_factory.mktemp("install")
    destdir = base / "root"
    sample = base / "sample.yaml"
    sample.write_text("version: 1\n")
    existing = destdir / "etc/mgsave/policy.yaml"
    existing.parent.mkdir(parents=True)
    existing.write_text("# the admin's own\n")
    out = make("install", destdir=destdir, SAMPLE_POLICY=str(sample))
    return destdir, out


def test_install_lays_out_the_files(staged):
    destdir, _ = staged
    lib = destdir / "usr/local/lib/mgsave"
    assert os.readlink(destdir / "usr/local/bin/mgsave") == f"{PREFIX}/lib/mgsave/venv/bin/mgsave"
    script = lib / "venv/bin/mgsave"
    assert script.read_text().splitlines()[0] == f"#!{PREFIX}/lib/mgsave/venv/bin/python"  # not the staging path
    for hook in HOOKS:
        path = lib / "hooks" / hook
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
        text = path.read_text()
        assert f"mgsave={PREFIX}/bin/mgsave" in text and "@BINDIR@" not in text
    unit = destdir / "usr/local/lib/systemd/system/mgsave.service"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    text = unit.read_text()
    assert f"ExecStop={PREFIX}/lib/mgsave/hooks/mgsave-shutdown" in text
    boot = (destdir / "usr/local/lib/systemd/system/mgsave-boot.service").read_text()
    assert f"ExecStart={PREFIX}/lib/mgsave/hooks/mgsave-boot" in boot
    assert not re.search(r"@[A-Z]+@", text)
    assert (destdir / "usr/local/share/doc/mgsave/SYSTEMD.md").is_file()


def test_staged_package_imports_from_the_venv(staged, tmp_path):
    destdir, _ = staged
    python = destdir / "usr/local/lib/mgsave/venv/bin/python"
    out = subprocess.run([str(python), "-c", "import libmgsave.journal as j; print(j.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.startswith(str(destdir / "usr/local/lib/mgsave/venv/lib/"))


def test_staged_unit_verifies(staged, tmp_path):
    destdir, _ = staged
    text = (destdir / "usr/local/lib/systemd/system/mgsave.service").read_text()
    unit = tmp_path / "mgsave.service"
    unit.write_text(text.replace(f"{PREFIX}/lib/mgsave/hooks", str(destdir / "usr/local/lib/mgsave/hooks")))
    verify(unit)


def test_install_never_overwrites_the_policy(staged):
    destdir, out = staged
    assert (destdir / "etc/mgsave/policy.yaml").read_text() == "# the admin's own\n"
    assert "keeping the existing" in out.stdout
    assert "systemctl" not in out.stdout  # staged: nothing enabled


def test_install_puts_the_sample_policy_where_there_is_none(tmp_path):
    sample = tmp_path / "sample.yaml"
    sample.write_text("version: 1\n")
    destdir = tmp_path / "root"
    make("install-policy", destdir=destdir, SAMPLE_POLICY=str(sample))
    policy = destdir / "etc/mgsave/policy.yaml"
    assert policy.read_text() == "version: 1\n"
    assert stat.S_IMODE(policy.stat().st_mode) == 0o644
    assert stat.S_IMODE(policy.parent.stat().st_mode) == 0o755
    if os.geteuid() == 0:
        assert (policy.stat().st_uid, policy.stat().st_gid) == (0, 0)


def test_uninstall_leaves_policy_and_state_alone(tmp_path):
    destdir = tmp_path / "root"
    sample = tmp_path / "sample.yaml"
    sample.write_text("version: 1\n")
    make("install", destdir=destdir, SAMPLE_POLICY=str(sample))
    state = destdir / "var/lib/mgsave/last-shutdown.json"
    state.parent.mkdir(parents=True)
    state.write_text("{}")
    make("uninstall", destdir=destdir)
    assert (destdir / "etc/mgsave/policy.yaml").read_text() == "version: 1\n"
    assert state.read_text() == "{}"
    assert not (destdir / "usr/local/lib/mgsave").exists()
    assert not (destdir / "usr/local/bin/mgsave").is_symlink()
    assert not (destdir / "usr/local/lib/systemd/system/mgsave.service").exists()


def test_other_prefixes_put_the_unit_in_etc(tmp_path):
    destdir = tmp_path / "root"
    make("install-files", destdir=destdir, PREFIX="/opt/mgsave")
    unit = destdir / "etc/systemd/system/mgsave.service"
    assert "ExecStop=/opt/mgsave/lib/mgsave/hooks/mgsave-shutdown" in unit.read_text()
