"""The systemd unit, the hooks and `make install`/`make uninstall` into a staging root."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.doclinks import broken_links, tree_listing

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "units" / "mgsave.service"
BOOT_UNIT = ROOT / "units" / "mgsave-boot.service"
POWER_UNIT = ROOT / "units" / "mgsave-power.service"
UNITS = ("mgsave.service", "mgsave-boot.service", "mgsave-power.service")
HOOKS = ("mgsave-boot", "mgsave-shutdown", "mgsave-power")
PREFIX = "/usr/local"
# A valid policy (plan refuses a broken one, exit 2), that make install must leave alone.
ADMINS_POLICY = "# the admin's own\nversion: 1\n"


def need(tool: str) -> str:
    """The tool's path; skipped when it is missing, except under CI where it must be there."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing (scripts/setup installs it)")
        pytest.skip(f"{tool} is not installed")
    return path


def verify(*unit_files: Path, man: bool = False, manpath: Path | None = None) -> None:
    """systemd-analyze verify, treating every complaint about the units as a failure (with
    ``man``, the man pages they name must be installed, or be under ``manpath``)."""
    tool = need("systemd-analyze")
    env = dict(os.environ, MANPATH=str(manpath)) if manpath else None
    out = subprocess.run([tool, "verify", f"--man={'yes' if man else 'no'}", *map(str, unit_files)],
                         capture_output=True, text=True, env=env)
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
    assert "virt-guest-shutdown.target" in settings["Wants"]
    # Nothing of libvirt pulled in: the modular daemons conflict with libvirtd.service.
    assert not any("libvirtd" in w or "virtqemud" in w for w in settings["Wants"] + settings.get("Requires", []))
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


def test_power_unit_keeps_its_promises():
    settings = unit_settings(POWER_UNIT.read_text())
    assert settings["Type"] == ["exec"]
    assert settings["ExecStart"] == ["@HOOKDIR@/mgsave-power"]
    assert "ExecStop" not in settings
    # Restarted when it dies, not when the policy has no power: (exit 2); hardened like the others.
    assert settings["Restart"] == ["on-failure"] and settings["RestartPreventExitStatus"] == ["2"]
    assert "nut-server.service" in " ".join(settings["After"]).split()
    assert settings["ProtectSystem"] == ["strict"] and settings["NoNewPrivileges"] == ["yes"]
    assert settings["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]  # upsd, libvirt, systemd
    assert settings["WantedBy"] == ["multi-user.target"]


# The unit's stop runs the pass only when the host is going down (tests/cli/test_unit_stop.py).
@pytest.mark.parametrize("hook, subcommand", [("mgsave-boot", "boot"),
                                              ("mgsave-shutdown", "shutdown --if-host-going-down"),
                                              ("mgsave-power", "power watch")])
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


def make(*args: str, destdir: Path, check: bool = True, **variables: str) -> subprocess.CompletedProcess:
    need("make")
    command = ["make", "-C", str(ROOT), *args, f"DESTDIR={destdir}"]
    command += [f"{key}={value}" for key, value in variables.items()]
    out = subprocess.run(command, capture_output=True, text=True)
    if check:
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
    existing.write_text(ADMINS_POLICY)
    out = make("install", destdir=destdir, SAMPLE_POLICY=str(sample))
    return destdir, out


def test_install_lays_out_the_files(staged):
    destdir, _ = staged
    lib = destdir / "usr/local/lib/mgsave"
    # No virtualenv: plain files, run by the distribution's python3 (see the Makefile).
    assert not (lib / "venv").exists()
    launcher = destdir / "usr/local/bin/mgsave"
    assert launcher.is_file() and not launcher.is_symlink()
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o755
    text = launcher.read_text()
    assert text.splitlines()[0] == "#!/usr/bin/python3 -I"
    assert f'sys.path.insert(0, "{PREFIX}/lib/mgsave")' in text and str(destdir) not in text
    assert not re.search(r"@[A-Z]+@", text)
    for module in ("__init__.py", "cli.py", "policyfile/__init__.py"):
        assert (lib / "libmgsave" / module).is_file()
    schema = lib / "libmgsave/policy.schema.yaml"
    assert not schema.is_symlink() and schema.read_text() == (ROOT / "config/policy.schema.yaml").read_text()
    # Compiled for the installing interpreter, with the final path in tracebacks.
    compiled = list((lib / "libmgsave/__pycache__").glob("cli.cpython-*.pyc"))
    assert compiled and str(destdir).encode() not in compiled[0].read_bytes()
    for hook in HOOKS:
        path = lib / "hooks" / hook
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
        text = path.read_text()
        assert f"mgsave={PREFIX}/bin/mgsave" in text and "@BINDIR@" not in text
    unit = destdir / "usr/local/lib/systemd/system/mgsave.service"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    text = unit.read_text()
    assert f"ExecStop={PREFIX}/lib/mgsave/hooks/mgsave-shutdown" in text
    assert f"file://{PREFIX}/share/doc/mgsave/SYSTEMD.md" in text
    boot = (destdir / "usr/local/lib/systemd/system/mgsave-boot.service").read_text()
    assert f"ExecStart={PREFIX}/lib/mgsave/hooks/mgsave-boot" in boot
    power = (destdir / "usr/local/lib/systemd/system/mgsave-power.service").read_text()
    assert f"ExecStart={PREFIX}/lib/mgsave/hooks/mgsave-power" in power
    assert f"file://{PREFIX}/share/doc/mgsave/POWER.md" in power
    assert not re.search(r"@[A-Z]+@", text)
    for doc in ("SYSTEMD.md", "README.md", "RELIABILITY.md"):
        assert (destdir / "usr/local/share/doc/mgsave" / doc).is_file()
    # Every relative link of the installed documents leads to an installed file.
    entries = tree_listing(destdir)
    for doc in (destdir / "usr/local/share/doc/mgsave").glob("*.md"):
        installed = "/" + str(doc.relative_to(destdir))
        assert not broken_links(installed, doc.read_text(), entries), installed
    assert (destdir / "usr/local/share/man/man8/mgsave.8").read_text() == (ROOT / "man/mgsave.8").read_text()
    assert (destdir / "usr/local/share/man/man5/mgsave-policy.5").is_file()
    assert (destdir / "usr/local/share/mgsave/policy.schema.yaml").read_text() == schema.read_text()
    for output in (ROOT / "libmgsave/schemas").glob("*.schema.json"):  # the --json outputs' schemas
        assert (destdir / "usr/local/share/mgsave/schemas" / output.name).read_text() == output.read_text()
    completion = destdir / "usr/local/share/bash-completion/completions/mgsave"
    assert completion.read_text() == (ROOT / "completions/mgsave").read_text()
    zsh = destdir / "usr/local/share/zsh/site-functions/_mgsave"
    assert zsh.read_text() == (ROOT / "completions/_mgsave").read_text()


def _staged_launcher(destdir: Path, tmp_path: Path) -> Path:
    """The staged launcher, pointed at the staged code instead of the final location."""
    launcher = tmp_path / "mgsave"
    text = (destdir / "usr/local/bin/mgsave").read_text()
    launcher.write_text(text.replace(f'"{PREFIX}/lib/mgsave"', f'"{destdir}{PREFIX}/lib/mgsave"'))
    launcher.chmod(0o755)
    return launcher


def test_staged_launcher_runs_the_installed_code_on_debians_python(staged, tmp_path):
    destdir, _ = staged
    launcher = _staged_launcher(destdir, tmp_path)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}  # -I: PYTHONPATH is ignored
    out = subprocess.run([str(launcher), "--version"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith("mgsave "), out.stderr
    probe = subprocess.run(
        ["/usr/bin/python3", "-I", "-c",
         f"import sys; sys.path.insert(0, {str(destdir) + PREFIX + '/lib/mgsave'!r}); "
         "import libmgsave, libvirt, yaml, jsonschema; print(libmgsave.__file__)"],
        capture_output=True, text=True, cwd=ROOT)
    if probe.returncode != 0 and "No module named" in probe.stderr:
        need_debian_modules(probe.stderr)
    assert probe.stdout.startswith(f"{destdir}{PREFIX}/lib/mgsave/libmgsave/"), probe.stderr
    # A real command: the plan for libvirt's test driver, with the installed default policy.
    state = tmp_path / "state"
    out = subprocess.run([str(launcher), "plan", "--json", "--connect", "test:///default", "--state-dir", str(state),
                          "--policy", str(destdir / "etc/mgsave/policy.yaml"), "--insecure-policy"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert [g["name"] for g in json.loads(out.stdout)["plans"][0]["guests"]] == ["test"]


def need_debian_modules(detail: str) -> None:
    message = f"Debian's python3-libvirt/-yaml/-jsonschema are missing (scripts/setup installs them): {detail}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_launcher_names_the_missing_packages(staged, tmp_path):
    destdir, _ = staged
    launcher = _staged_launcher(destdir, tmp_path)
    # An interpreter without the distribution's modules: Debian's python3 with no site directories.
    text = launcher.read_text().replace("#!/usr/bin/python3 -I", "#!/usr/bin/python3 -IS", 1)
    launcher.write_text(text)
    out = subprocess.run([str(launcher), "check"], capture_output=True, text=True)
    assert out.returncode == 70
    assert "install python3-libvirt, python3-yaml, python3-jsonschema" in out.stderr


def fake_python(tmp_path: Path) -> Path:
    """Debian's python3 without its site directories: none of mgsave's dependencies importable."""
    python = tmp_path / "python3-bare"
    python.write_text('#!/bin/sh\nexec /usr/bin/python3 -S "$@"\n')
    python.chmod(0o755)
    return python


def test_install_refuses_an_interpreter_without_the_dependencies(tmp_path):
    destdir = tmp_path / "root"
    out = make("install", destdir=destdir, check=False, PYTHON=str(fake_python(tmp_path)))
    assert out.returncode != 0
    assert "python3-libvirt python3-yaml python3-jsonschema" in out.stderr, out.stderr
    assert not (destdir / "usr/local/bin/mgsave").exists()
    # CHECK_DEPS=no stages anyway (for another machine).
    make("install-files", destdir=destdir, PYTHON=str(fake_python(tmp_path)), CHECK_DEPS="no")
    assert (destdir / "usr/local/bin/mgsave").read_text().startswith(f"#!{tmp_path}/python3-bare -I\n")


def test_python_chooses_the_launchers_interpreter(tmp_path):
    destdir = tmp_path / "root"
    python = Path("/usr/bin/python3").resolve()  # e.g. /usr/bin/python3.11
    make("install-files", destdir=destdir, PYTHON=str(python))
    assert (destdir / "usr/local/bin/mgsave").read_text().splitlines()[0] == f"#!{python} -I"


def test_install_replaces_a_virtualenv_install(tmp_path):
    """An install of an older mgsave (a private virtualenv, bin/mgsave a symlink into it)."""
    destdir = tmp_path / "root"
    venv_bin = destdir / "usr/local/lib/mgsave/venv/bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "mgsave").write_text("#!/usr/local/lib/mgsave/venv/bin/python\n")
    (destdir / "usr/local/bin").mkdir(parents=True)
    (destdir / "usr/local/bin/mgsave").symlink_to(f"{PREFIX}/lib/mgsave/venv/bin/mgsave")
    make("install-files", destdir=destdir)
    assert not (destdir / "usr/local/lib/mgsave/venv").exists()
    launcher = destdir / "usr/local/bin/mgsave"
    assert not launcher.is_symlink() and launcher.read_text().startswith("#!/usr/bin/python3 -I\n")


def test_staged_unit_verifies(staged, tmp_path):
    destdir, _ = staged
    units = []
    for name in UNITS:
        text = (destdir / "usr/local/lib/systemd/system" / name).read_text()
        unit = tmp_path / name
        unit.write_text(text.replace(f"{PREFIX}/lib/mgsave/hooks", str(destdir / "usr/local/lib/mgsave/hooks")))
        units.append(unit)
    # Documentation=man:mgsave(8): the installed man page must be found.
    verify(*units, man=True, manpath=destdir / "usr/local/share/man")


def test_install_never_overwrites_the_policy(staged):
    destdir, out = staged
    assert (destdir / "etc/mgsave/policy.yaml").read_text() == ADMINS_POLICY
    assert "keeping the existing" in out.stdout
    assert "systemctl" not in out.stdout  # staged: nothing enabled


def test_install_puts_the_default_policy_where_there_is_none(tmp_path):
    destdir = tmp_path / "root"
    make("install-policy", destdir=destdir)
    policy = destdir / "etc/mgsave/policy.yaml"
    # Every setting commented out; the editor's schema line names where the schema went.
    default = (ROOT / "config/policy.default.yaml").read_text()
    assert policy.read_text() == default.replace("/usr/share/mgsave/", f"{PREFIX}/share/mgsave/")
    assert policy.read_text().splitlines()[0] == f"# yaml-language-server: $schema={PREFIX}/share/mgsave/policy.schema.yaml"
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
    save_file = destdir / "var/lib/mgsave/images/5d3f1c2e-8a4b-4f2e-9c1d-0e6a7b8c9d0f.save"
    save_file.parent.mkdir()
    save_file.write_text("a transient guest's memory")
    out = make("uninstall", destdir=destdir)
    assert "note: 1 save file(s) of transient guests are left in /var/lib/mgsave/images/" in out.stdout
    assert save_file.exists()
    assert (destdir / "etc/mgsave/policy.yaml").read_text() == "version: 1\n"
    assert state.read_text() == "{}"
    assert not (destdir / "usr/local/lib/mgsave").exists()
    assert not (destdir / "usr/local/bin/mgsave").exists()
    for gone in ("lib/systemd/system/mgsave.service", "lib/systemd/system/mgsave-boot.service",
                 "lib/systemd/system/mgsave-power.service",
                 "share/man/man8/mgsave.8", "share/man/man5/mgsave-policy.5", "share/mgsave", "share/doc/mgsave",
                 "share/bash-completion/completions/mgsave", "share/zsh/site-functions/_mgsave"):
        assert not (destdir / "usr/local" / gone).exists(), gone


def test_other_prefixes_put_the_unit_in_etc(tmp_path):
    destdir = tmp_path / "root"
    make("install-files", destdir=destdir, PREFIX="/opt/mgsave")
    unit = destdir / "etc/systemd/system/mgsave.service"
    assert "ExecStop=/opt/mgsave/lib/mgsave/hooks/mgsave-shutdown" in unit.read_text()


def test_install_puts_the_apt_hook_where_apt_is_and_uninstall_removes_it(tmp_path):
    """The apt hook (docs/UPGRADES.md): its apt.conf.d file names the installed hook; the hook runs
    the installing Python on the installed code; nothing of it where there is no /etc/apt."""
    without = tmp_path / "no-apt"
    make("install-files", destdir=without)
    assert not (without / "etc/apt").exists()
    destdir = tmp_path / "root"
    (destdir / "etc/apt/apt.conf.d").mkdir(parents=True)
    make("install-files", destdir=destdir)
    conf = (destdir / "etc/apt/apt.conf.d/20mgsave").read_text()
    hook = f"{PREFIX}/lib/mgsave/hooks/mgsave-apt-hook"
    assert f'DPkg::Pre-Install-Pkgs {{ "{hook} || test $? -ne 75"; }};' in conf
    assert f'DPkg::Tools::Options::{hook}::Version "3";' in conf
    assert stat.S_IMODE((destdir / "etc/apt/apt.conf.d/20mgsave").stat().st_mode) == 0o644
    text = (destdir / hook.lstrip("/")).read_text()
    assert "python=/usr/bin/python3\n" in text and f"libdir={PREFIX}/lib/mgsave\n" in text
    assert not re.search(r"@[A-Z]+@", text + conf)
    # Run as apt would, on the staged code: no watched package in the list, nothing said.
    staged = tmp_path / "mgsave-apt-hook"
    staged.write_text(text.replace(f"libdir={PREFIX}/lib/mgsave", f"libdir={destdir}{PREFIX}/lib/mgsave"))
    staged.chmod(0o755)
    out = subprocess.run([str(staged)], input="VERSION 3\nA=b\n\nhello 1 all none < 2 all none /h.deb\n",
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", ""), out
    make("uninstall", destdir=destdir)
    assert not (destdir / "etc/apt/apt.conf.d/20mgsave").exists()
    assert (destdir / "etc/apt/apt.conf.d").is_dir()
