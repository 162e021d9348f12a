"""The Debian package: built once per session by ``make deb`` in a copy of the tree, then checked.

- lintian: no error, no warning that debian/*lintian-overrides does not justify;
- what the .deb holds: units and hooks with the package's paths, man pages, schema, docs, the
  policy as a conffile that means the built-in defaults, Depends/Recommends;
- the maintainer scripts, run for real in a private mount namespace (a tmpfs on /run) with
  stand-ins for systemctl, deb-systemd-invoke and deb-systemd-helper that log each call: install
  starts mgsave.service and never mgsave-boot.service, an upgrade stops and restarts nothing, a
  removal stops the units only after emptying ExecStop=;
- the installed units pass ``systemd-analyze verify`` with the man pages installed;
- one container boot (this machine's root under systemd-nspawn, ``tests.rig.container``) with two
  guests, one running and one with a managed-save image: ``apt-get install ./mgsave.deb`` arms the
  shutdown pass and starts neither guest, a reinstall (the upgrade path) restarts nothing, and
  ``apt-get remove`` stops mgsave.service without saving the running guest; then ``make install``
  and ``make uninstall`` on the same host do the same.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from libmgsave import __version__
from tests.doclinks import broken_links, deb_listing, relative_links, resolve
from tests.test_units import verify

pytestmark = pytest.mark.package

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("make", "dpkg-buildpackage", "dpkg-deb", "dh", "dh_python3", "fakeroot", "lintian")
DROPIN = "/run/systemd/system/mgsave.service.d/zz-mgsave-package-removal.conf"
DEPENDS = {"python3-libvirt", "python3-yaml", "python3-jsonschema"}
IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                ".hypothesis", ".cache")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(reason: str):
    if in_ci():
        pytest.fail(f"{reason} (scripts/setup installs what the package tests need)", pytrace=False)
    pytest.skip(reason)


@dataclass
class Built:
    deb: Path
    changes: Path
    tree: Path  # the copy it was built from
    root: Path  # the .deb's files (dpkg-deb -x)
    control: Path  # its control files (dpkg-deb -e)
    log: str

    def field(self, name: str) -> str:
        return subprocess.run(["dpkg-deb", "-f", str(self.deb), name], capture_output=True, text=True,
                              check=True).stdout.strip()

    def unit(self, name: str) -> Path:
        for directory in ("usr/lib/systemd/system", "lib/systemd/system"):
            if (self.root / directory / name).is_file():
                return self.root / directory / name
        raise AssertionError(f"the package has no {name}")


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Built:
    """``make deb`` once, in a copy of this tree (the work tree stays as it is)."""
    for tool in TOOLS:
        if not shutil.which(tool):
            unavailable(f"{tool} is not installed")
    base = tmp_path_factory.mktemp("deb")
    tree = base / "tree"
    shutil.copytree(ROOT, tree, ignore=IGNORE, symlinks=True)
    started = time.monotonic()
    out = subprocess.run(["make", "-C", str(tree), "deb", f"DIST={base / 'dist'}"], capture_output=True,
                         text=True, timeout=900, stdin=subprocess.DEVNULL)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    print(f"\nmake deb: {time.monotonic() - started:.1f} s")
    deb = base / "dist" / f"mgsave_{__version__}_all.deb"
    changes = next((base / "dist").glob(f"mgsave_{__version__}_*.changes"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(base / "root")], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(base / "control")], check=True)
    return Built(deb, changes, tree, base / "root", base / "control", log)


# -- the build, lintian -------------------------------------------------------------------------


def test_make_deb_builds_the_package_outside_the_tree(built):
    assert built.deb.is_file() and built.deb.stat().st_size > 10_000
    assert "dpkg-buildpackage -us -uc -b" in built.log
    # debian/ of the tree it was built from is as checked in: the build ran in a copy of its own.
    assert sorted(p.name for p in (built.tree / "debian").iterdir()) == sorted(p.name for p in (ROOT / "debian").iterdir())
    assert built.field("Version") == __version__ and built.field("Architecture") == "all"


def test_the_build_prints_no_setuptools_deprecation(built):
    for complaint in ("SetuptoolsDeprecationWarning", "absent from the `packages` configuration",
                      "as data is deprecated"):
        assert complaint not in built.log, built.log[-6000:]


def test_lintian_finds_no_error_and_no_unjustified_warning(built):
    out = subprocess.run(["lintian", "--fail-on", "error,warning", str(built.changes)],
                         capture_output=True, text=True, timeout=600)
    complaints = [line for line in out.stdout.splitlines() if line.startswith(("E:", "W:"))]
    assert out.returncode == 0 and not complaints, out.stdout + out.stderr
    # Every override says why, in a comment right above it.
    for path in (ROOT / "debian").glob("**/*lintian-overrides"):
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            if line.strip() and not line.startswith("#"):
                assert index > 0 and lines[index - 1].startswith("#"), f"{path.name}: {line} has no comment"


# -- what the package holds ---------------------------------------------------------------------


def test_depends_on_debians_python_modules(built):
    depends = {d.split()[0] for d in built.field("Depends").split(", ")}
    recommends = {d.split()[0] for d in built.field("Recommends").split(", ")}
    assert DEPENDS <= depends
    assert any(d.startswith("python3") and d not in DEPENDS for d in depends)  # python3:any (>= 3.11~)
    assert {"python3-systemd", "libvirt-daemon-system"} <= recommends
    assert "python3-systemd" not in depends


def test_the_code_is_for_debians_python3_not_one_version(built):
    launcher = (built.root / "usr/bin/mgsave").read_text()
    assert launcher.splitlines()[0] == "#!/usr/bin/python3"
    package = built.root / "usr/lib/python3/dist-packages/libmgsave"
    assert (package / "cli.py").is_file() and (package / "policy.schema.yaml").is_file()
    listing = subprocess.run(["dpkg-deb", "-c", str(built.deb)], capture_output=True, text=True, check=True).stdout
    assert not re.search(r"python3\.\d+|\.pyc|venv", listing), "something tied to one Python version"


def test_units_and_hooks_have_the_packages_paths(built):
    arming = built.unit("mgsave.service").read_text()
    boot = built.unit("mgsave-boot.service").read_text()
    assert "ExecStop=/usr/lib/mgsave/mgsave-shutdown" in arming and "ExecStart=" not in arming.replace("# No ExecStart=", "")
    assert "ExecStart=/usr/lib/mgsave/mgsave-boot" in boot
    for text in (arming, boot):
        assert "Documentation=man:mgsave(8) file:///usr/share/doc/mgsave/SYSTEMD.md" in text
        assert not re.search(r"@[A-Z]+@", text)
    for hook, subcommand in (("mgsave-boot", "boot"), ("mgsave-shutdown", "shutdown --if-host-going-down")):
        path = built.root / "usr/lib/mgsave" / hook
        assert os.access(path, os.X_OK)
        text = path.read_text()
        assert "mgsave=/usr/bin/mgsave" in text and f'exec "$mgsave" {subcommand} "$@"' in text


def test_the_apt_hook_runs_debians_python3_on_the_packages_code(built):
    hook = built.root / "usr/lib/mgsave/mgsave-apt-hook"
    assert os.access(hook, os.X_OK)
    text = hook.read_text()
    assert "python=/usr/bin/python3\n" in text and "libdir=/usr/lib/python3/dist-packages\n" in text
    conf = (built.root / "etc/apt/apt.conf.d/20mgsave").read_text()
    assert 'DPkg::Pre-Install-Pkgs { "/usr/lib/mgsave/mgsave-apt-hook || test $? -ne 75"; };' in conf
    assert 'DPkg::Tools::Options::/usr/lib/mgsave/mgsave-apt-hook::Version "3";' in conf
    assert not re.search(r"@[A-Z]+@", text + conf)
    assert (built.root / "usr/share/doc/mgsave/UPGRADES.md").is_file()


def test_man_pages_schema_and_docs(built):
    for page in ("usr/share/man/man8/mgsave.8.gz", "usr/share/man/man5/mgsave-policy.5.gz"):
        assert (built.root / page).is_file(), page
    completion = built.root / "usr/share/bash-completion/completions/mgsave"
    assert completion.read_text() == (ROOT / "completions/mgsave").read_text()
    zsh = built.root / "usr/share/zsh/vendor-completions/_mgsave"
    assert zsh.read_text() == (ROOT / "completions/_mgsave").read_text()
    schema = built.root / "usr/share/mgsave/policy.schema.yaml"
    assert schema.resolve().read_text() == (ROOT / "config/policy.schema.yaml").read_text()
    for output in (ROOT / "libmgsave/schemas").glob("*.schema.json"):  # the --json outputs' schemas
        installed = built.root / "usr/share/mgsave/schemas" / output.name
        assert installed.resolve().read_text() == output.read_text(), output.name
    docs = built.root / "usr/share/doc/mgsave"
    # Not compressed: the units link to file:///usr/share/doc/mgsave/SYSTEMD.md.
    for doc in ("README.md", "SYSTEMD.md", "RELIABILITY.md", "copyright"):
        assert (docs / doc).is_file(), doc


def test_every_relative_link_of_the_installed_documents_leads_to_a_shipped_file(built):
    """/usr/share/doc/mgsave/README.md links docs/SYSTEMD.md, config/policy.sample.yaml, ... in the
    source tree; installed, each link must lead to a file of the package (symlinks followed)."""
    listing = subprocess.run(["dpkg-deb", "-c", str(built.deb)], capture_output=True, text=True, check=True).stdout
    entries = deb_listing(listing)
    docs = sorted(p for p in entries if p.startswith("/usr/share/doc/mgsave/") and p.endswith(".md"))
    assert "/usr/share/doc/mgsave/README.md" in docs and "/usr/share/doc/mgsave/SYSTEMD.md" in docs
    readme = (built.root / "usr/share/doc/mgsave/README.md").read_text()
    assert len(relative_links(readme)) >= 10
    for doc in docs:
        text = (built.root / doc.lstrip("/")).read_text()
        assert not broken_links(doc, text, entries), (doc, broken_links(doc, text, entries))
    # Those that lead into the package's data: the sample policy, the schemas.
    assert resolve("/usr/share/doc/mgsave/examples/policy.sample.yaml", entries)
    assert (built.root / "usr/share/doc/mgsave/examples/policy.sample.yaml").read_text() == \
        (ROOT / "config/policy.sample.yaml").read_text()
    assert resolve("/usr/share/mgsave/schemas/mgsave.pass.schema.json", entries)
    # The README's install commands name this version's package.
    assert f"dist/mgsave_{__version__}_all.deb" in readme


def test_the_policy_is_a_conffile_that_means_the_builtin_defaults(built):
    assert sorted((built.control / "conffiles").read_text().split()) == ["/etc/apt/apt.conf.d/20mgsave",
                                                                          "/etc/mgsave/policy.yaml"]
    policy = built.root / "etc/mgsave/policy.yaml"
    assert policy.read_text() == (ROOT / "config/policy.default.yaml").read_text()
    assert policy.read_text().splitlines()[0] == "# yaml-language-server: $schema=/usr/share/mgsave/policy.schema.yaml"


def _plan_with_packaged_code(built: Built, policy_args: list[str], state_dir: Path) -> dict:
    """``mgsave plan --json --connect test:///default`` run by Debian's python3 on the package's code,
    with /etc/mgsave/policy.yaml replaced by a path that does not exist (no policy at all)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from libmgsave import cli, policyfile; "
            "policyfile.DEFAULT_POLICY_PATH = sys.argv[2]; sys.exit(cli.main(sys.argv[3:]))")
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", code, str(built.root / "usr/lib/python3/dist-packages"),
                          str(state_dir / "no-such-policy.yaml"), "plan", "--json", "--connect", "test:///default",
                          "--state-dir", str(state_dir), *policy_args], capture_output=True, text=True)
    if "No module named" in out.stderr:
        unavailable(f"Debian's python3 lacks mgsave's dependencies: {out.stderr.strip()[-300:]}")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    plan.pop("policy_used")  # the file, or the built-in defaults
    for each in plan["plans"]:
        each.pop("policy")  # "built-in defaults", or the file's path
    return plan


def test_the_installed_policy_plans_exactly_like_no_policy(built, tmp_path):
    without = _plan_with_packaged_code(built, [], tmp_path)
    installed = _plan_with_packaged_code(built, ["--policy", str(built.root / "etc/mgsave/policy.yaml")], tmp_path)
    assert installed == without
    assert [g["name"] for g in without["plans"][0]["guests"]] == ["test"]


def test_the_installed_units_verify_with_the_man_pages_installed(built, tmp_path):
    units = []
    for name in ("mgsave.service", "mgsave-boot.service"):
        text = built.unit(name).read_text().replace("/usr/lib/mgsave/", f"{built.root}/usr/lib/mgsave/")
        (tmp_path / name).write_text(text)
        units.append(tmp_path / name)
    verify(*units, man=True, manpath=built.root / "usr/share/man")


# -- the maintainer scripts, run -----------------------------------------------------------------

STANDIN = """#!/bin/sh
# A stand-in: logs the call, and whether mgsave.service's ExecStop= was emptied at that moment.
dropin=0
grep -qx 'ExecStop=' {dropin} 2>/dev/null && dropin=1
echo "$(basename "$0") $* [dropin=$dropin]" >> {log}
case "$(basename "$0") $*" in
    "systemctl --quiet is-enabled libvirt-guests.service") exit 1 ;;
    "systemctl --quiet is-active mgsave.service") exit ${{STANDIN_INACTIVE:-0}} ;;
    "systemctl is-enabled libvirt-guests.service")
        echo "${{STANDIN_LIBVIRT_GUESTS:-not-found}}"; [ "${{STANDIN_LIBVIRT_GUESTS:-}}" = enabled ]; exit $? ;;
esac
exit 0
"""
DRIVER = """set -eu
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system /var/lib/mgsave
mount -t tmpfs tmpfs /var/lib/mgsave
mkdir /var/lib/mgsave/images
for n in $(seq 1 "${{SAVE_FILES:-0}}"); do echo saved > "/var/lib/mgsave/images/$n.save"; done
control=$1; log=$2; shift 2
for step in "$@"; do
    echo "== $step" >> "$log"
    set -- $step
    script=$1; shift
    rc=0; sh -e "$control/$script" "$@" >> "$log" 2>&1 || rc=$?
    echo "-- rc=$rc dropin=$(test -e {dropin} && echo present || echo absent)" >> "$log"
done
"""


def run_scripts(built: Built, tmp_path: Path, *steps: str, inactive: bool = False, libvirt_guests: str = "",
                save_files: int = 0) -> dict[str, list[str]]:
    """Each step ("postinst configure 0.1.0") run in one private mount namespace (a tmpfs on /run
    and on /var/lib/mgsave, with ``save_files`` transient guests' save files), in order; returns
    each step's lines: the stand-ins' calls, what the scripts said, and a last line with its exit
    code and the drop-in. ``libvirt_guests``: what systemctl is-enabled says of it."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        unavailable("running the maintainer scripts needs root and unshare")
    bindir = tmp_path / "bin"
    bindir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    for name in ("systemctl", "deb-systemd-invoke", "deb-systemd-helper", "py3compile", "py3clean", "pypy3compile"):
        (bindir / name).write_text(STANDIN.format(dropin=DROPIN, log=log))
        (bindir / name).chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "STANDIN_INACTIVE": "3" if inactive else "0", "STANDIN_LIBVIRT_GUESTS": libvirt_guests,
           "SAVE_FILES": str(save_files)}
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", DRIVER.format(dropin=DROPIN), "driver",
                    str(built.control), str(log), *steps], env=env, check=True, timeout=120)
    steps_out: dict[str, list[str]] = {}
    current = None
    for line in log.read_text().splitlines():
        if line.startswith("== "):
            current = line[3:]
            steps_out[current] = []
        else:
            steps_out[current].append(line)
    return steps_out


def calls(lines: list[str], tool: str) -> list[str]:
    return [line for line in lines if line.startswith(tool + " ")]


def test_no_preinst_stops_anything(built):
    preinst = built.control / "preinst"
    assert not preinst.exists() or "stop" not in preinst.read_text()


# mgsave-early.service only waits for logind's PrepareForShutdown: starting, restarting and
# stopping it saves or starts nothing, so debhelper's own snippets handle it.
EARLY_START = "deb-systemd-invoke start mgsave-early.service [dropin=0]"
# mgsave-power.service is installed, not enabled (only a host with power: wants it):
# deb-systemd-invoke starts, restarts and stops only what the admin enabled.
POWER_START = "deb-systemd-invoke start mgsave-power.service [dropin=0]"


def test_a_fresh_install_starts_mgsave_service_only(built, tmp_path):
    out = run_scripts(built, tmp_path, "postinst configure")["postinst configure"]
    assert out[-1].startswith("-- rc=0")
    helper = calls(out, "deb-systemd-helper")
    assert "deb-systemd-helper enable mgsave.service [dropin=0]" in helper
    assert "deb-systemd-helper enable mgsave-boot.service [dropin=0]" in helper
    assert "deb-systemd-helper enable mgsave-early.service [dropin=0]" in helper
    # Enabled only where it was before (the stand-ins answer yes to every question)
    power = "deb-systemd-helper debian-installed mgsave-power.service [dropin=0]"
    assert helper.index(power) < helper.index("deb-systemd-helper enable mgsave-power.service [dropin=0]")
    assert "deb-systemd-helper debian-installed mgsave.service [dropin=0]" not in helper
    invoke = calls(out, "deb-systemd-invoke")
    assert invoke == [EARLY_START, POWER_START, "deb-systemd-invoke start mgsave.service [dropin=0]"], out
    # Enabled before it is started (deb-systemd-invoke starts only enabled units).
    assert out.index("deb-systemd-helper enable mgsave.service [dropin=0]") < out.index(invoke[2])
    for line in calls(out, "systemctl"):
        assert not re.search(r"\b(start|restart|try-restart|stop|reload-or-restart)\b", line), line


def test_the_postinst_says_so_when_the_shutdown_pass_is_not_armed(built, tmp_path):
    """E.g. a policy-rc.d that forbids starting services: deb-systemd-invoke then starts nothing."""
    out = run_scripts(built, tmp_path, "postinst configure", inactive=True)["postinst configure"]
    assert out[-1].startswith("-- rc=0")
    assert any("mgsave.service is not active, so no guest is saved at shutdown" in line for line in out), out
    quiet = run_scripts(built, tmp_path / "again", "postinst configure")["postinst configure"]
    assert not any("is not active" in line for line in quiet)


def test_an_upgrade_stops_and_restarts_nothing(built, tmp_path):
    out = run_scripts(built, tmp_path, f"prerm upgrade {__version__}", f"postrm upgrade {__version__}",
                      f"postinst configure {__version__}")
    assert all(lines[-1].startswith("-- rc=0") for lines in out.values()), out
    for step in (f"prerm upgrade {__version__}", f"postrm upgrade {__version__}"):
        assert not calls(out[step], "deb-systemd-invoke") and not calls(out[step], "systemctl"), out[step]
    configure = out[f"postinst configure {__version__}"]
    # The new units take effect by a reload; start is a no-op for the active unit.
    assert "systemctl --system daemon-reload [dropin=0]" in configure
    assert calls(configure, "deb-systemd-invoke") == [
        "deb-systemd-invoke restart mgsave-early.service [dropin=0]",
        "deb-systemd-invoke restart mgsave-power.service [dropin=0]",
        "deb-systemd-invoke start mgsave.service [dropin=0]"]


def test_removal_empties_execstop_before_it_stops_the_units(built, tmp_path):
    out = run_scripts(built, tmp_path, "prerm remove", "postrm remove", "postrm purge")
    prerm = out["prerm remove"]
    assert prerm[-1] == "-- rc=0 dropin=present"
    reload_at = prerm.index("systemctl --system daemon-reload [dropin=1]")
    stop = calls(prerm, "deb-systemd-invoke")
    assert stop == ["deb-systemd-invoke stop mgsave-boot.service mgsave.service [dropin=1]",
                    "deb-systemd-invoke stop mgsave-power.service [dropin=1]",
                    "deb-systemd-invoke stop mgsave-early.service [dropin=1]"], prerm
    assert reload_at < prerm.index(stop[0])  # systemd knew ExecStop= was empty before the stop
    postrm = out["postrm remove"]
    assert postrm[-1] == "-- rc=0 dropin=absent"
    assert "systemctl --system daemon-reload [dropin=0]" in postrm
    purge = out["postrm purge"]
    assert "deb-systemd-helper purge mgsave.service [dropin=0]" in purge
    assert not calls(purge, "deb-systemd-invoke")


def _said(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("mgsave:")]


@pytest.mark.parametrize("state, again", [
    ("disabled", "turn it on again: systemctl enable libvirt-guests.service"),
    ("masked", "turn it on again: systemctl unmask libvirt-guests.service && systemctl enable libvirt-guests.service"),
])
def test_removal_says_to_turn_libvirt_guests_on_again_and_what_is_left(built, tmp_path, state, again):
    out = run_scripts(built, tmp_path, "prerm remove", "postrm remove", "postrm purge", libvirt_guests=state,
                      save_files=2)
    said = _said(out["postrm remove"])
    assert out["postrm remove"][-1] == "-- rc=0 dropin=absent"
    assert len(said) == 2, out["postrm remove"]
    assert said[0].startswith(f"mgsave: libvirt-guests.service is {state}, so nothing saves or shuts down")
    assert said[0].endswith(again)
    assert said[1].startswith("mgsave: 2 save file(s) of transient guests are left in /var/lib/mgsave/images/")
    assert "virsh restore /var/lib/mgsave/images/<uuid>.save" in said[1]
    assert not _said(out["prerm remove"]) and not _said(out["postrm purge"])


def test_removal_says_nothing_when_libvirt_guests_is_on_and_nothing_is_left(built, tmp_path):
    for state in ("enabled", ""):  # enabled, or not installed at all
        out = run_scripts(built, tmp_path / (state or "none"), "prerm remove", "postrm remove", libvirt_guests=state)
        assert not _said(out["postrm remove"]), out["postrm remove"]


def test_a_failed_removal_arms_the_shutdown_pass_again(built, tmp_path):
    """dpkg runs 'postinst abort-remove' when a removal fails after the prerm."""
    out = run_scripts(built, tmp_path, "prerm remove", "postinst abort-remove")
    abort = out["postinst abort-remove"]
    assert abort[-1] == "-- rc=0 dropin=absent"
    assert calls(abort, "deb-systemd-invoke") == [EARLY_START, POWER_START,
                                                  "deb-systemd-invoke start mgsave.service [dropin=0]"]


# -- one booted host: install, upgrade, remove with guests ---------------------------------------

GUESTS = ("pk-run", "pk-saved")
DEB_IN_CONTAINER = "/var/cache/mgsave-test/mgsave.deb"
SRC_IN_CONTAINER = "/usr/src/mgsave-package-test"  # a copy of this tree, for make install
APT_ENV = ("env", "DEBIAN_FRONTEND=noninteractive")


def _container_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("systemd-nspawn", "nsenter", "journalctl"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    for path in ("/usr/sbin/libvirtd", "/usr/bin/qemu-system-x86_64", "/lib/systemd/systemd"):
        if not os.path.exists(path):
            return f"{path} is missing"
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "mgsave"], capture_output=True, text=True).stdout
    if "installed" in status.split():
        return "mgsave is installed on this machine itself: its root is the container's"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not importable"
    return None


@pytest.fixture
def host():
    from tests.rig.container import prepared_host

    reason = _container_reason()
    if reason:
        unavailable(reason)
    with prepared_host("mgsave-deb-nspawn-") as c:
        yield c


def _show(c, unit: str, prop: str) -> str:
    return c.run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()


def _domains(c) -> dict[str, dict]:
    conn = c.connect()
    try:
        out = {}
        for name in GUESTS:
            dom = conn.lookupByName(name)
            out[name] = {"state": dom.state()[0], "id": dom.ID(), "saved": bool(dom.hasManagedSaveImage(0))}
        return out
    finally:
        conn.close()


def _no_pass_ran(c) -> None:
    records = sorted(p.name for p in c.dir("mgsave").iterdir()) if c.dir("mgsave").exists() else []
    # A pass's records; `mgsave check` keeps the last valid copy of the policy (last-valid-policy-*).
    assert not [r for r in records if r.startswith(("last-shutdown", "last-boot"))], f"a pass ran: {records}"


def _exposure(c, unit: str) -> tuple[float, str, list[str]]:
    out = c.run("systemd-analyze", "security", "--no-pager", unit, check=False)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", out.stdout)
    assert match, out.stdout + out.stderr
    open_items = [line.strip() for line in out.stdout.splitlines() if line.lstrip().startswith("✗")]
    return float(match.group(1)), match.group(2), open_items


@pytest.mark.systemd
@pytest.mark.rig
def test_install_upgrade_and_remove_on_a_booted_host(built, host):
    """One boot: install with a running and a saved guest, reinstall (the upgrade path), remove;
    then the same with make install and make uninstall."""
    from tests.rig.guests import domain_xml

    c = host
    timings: list[tuple[str, float]] = []
    target = c.root / DEB_IN_CONTAINER.lstrip("/")
    target.parent.mkdir(parents=True)
    shutil.copy(built.deb, target)

    # This machine's image may have a policy-rc.d that forbids starting services (as container
    # images do; then the postinst says the shutdown pass is not armed yet). A real host has none.
    (c.root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
    timings.append(("boot (systemctl is-system-running)", c.boot()))
    conn = c.connect()
    try:
        for name in GUESTS:
            conn.defineXML(domain_xml(name))
            conn.lookupByName(name).create()
        c.wait_ticking(GUESTS)
        conn.lookupByName("pk-saved").managedSave(0)
    finally:
        conn.close()
    before = _domains(c)
    assert before["pk-run"]["state"] == 1 and before["pk-saved"] == {"state": 5, "id": -1, "saved": True}
    ticks = c.ticks("pk-run")[-1]

    # Install: arms the shutdown pass, runs no pass, starts neither guest.
    started = time.monotonic()
    c.run(*APT_ENV, "apt-get", "install", "-y", "--no-install-recommends", DEB_IN_CONTAINER, timeout=600)
    timings.append(("apt-get install ./mgsave.deb", time.monotonic() - started))
    for unit in ("mgsave.service", "mgsave-boot.service"):
        assert c.run("systemctl", "is-enabled", unit).stdout.strip() == "enabled", unit
    assert _show(c, "mgsave.service", "ActiveState") == "active"
    assert _show(c, "mgsave-boot.service", "ActiveState") == "inactive"
    assert _show(c, "mgsave-boot.service", "InactiveExitTimestampMonotonic") == "0"  # never started
    armed_at = _show(c, "mgsave.service", "ActiveEnterTimestampMonotonic")
    assert _domains(c) == before
    _no_pass_ran(c)
    assert c.run("cat", "/etc/mgsave/policy.yaml").stdout == (ROOT / "config/policy.default.yaml").read_text()
    assert c.run("mgsave", "check").returncode == 0
    for page in ("mgsave", "mgsave-policy"):
        assert c.run("man", "-w", page).stdout.strip().startswith("/usr/share/man/")

    # The installed units verify, man pages included; their sandbox, as systemd rates it.
    paths = [_show(c, unit, "FragmentPath") for unit in ("mgsave.service", "mgsave-boot.service")]
    out = c.run("systemd-analyze", "verify", "--man=yes", *paths, check=False)
    assert out.returncode == 0 and "mgsave" not in out.stderr, out.stderr
    exposure = {unit: _exposure(c, unit) for unit in ("mgsave.service", "mgsave-boot.service")}

    # Reinstalling runs the upgrade path (prerm upgrade, postinst configure <version>).
    started = time.monotonic()
    c.run("dpkg", "-i", DEB_IN_CONTAINER, timeout=600)
    timings.append(("dpkg -i (reinstall: the upgrade path)", time.monotonic() - started))
    assert _show(c, "mgsave.service", "ActiveState") == "active"
    assert _show(c, "mgsave.service", "ActiveEnterTimestampMonotonic") == armed_at  # neither stopped nor restarted
    assert _show(c, "mgsave-boot.service", "InactiveExitTimestampMonotonic") == "0"
    assert _domains(c) == before
    _no_pass_ran(c)

    # Removal: mgsave.service goes inactive without its ExecStop; the running guest runs on.
    started = time.monotonic()
    c.run(*APT_ENV, "apt-get", "remove", "-y", "mgsave", timeout=600)
    timings.append(("apt-get remove mgsave", time.monotonic() - started))
    assert _show(c, "mgsave.service", "ActiveState") == "inactive"
    assert c.run("test", "-e", DROPIN, check=False).returncode == 1  # the postrm cleaned up
    after = _domains(c)
    assert after == before, after  # same domain ID: not saved and resumed, not restarted
    c.wait_ticking(["pk-run"], after={"pk-run": ticks})
    assert c.guest_boots("pk-run") == 1
    _no_pass_ran(c)
    assert c.journal("_SYSTEMD_UNIT=mgsave.service", "MGSAVE_PASS=shutdown") == []
    c.run(*APT_ENV, "apt-get", "purge", "-y", "mgsave", timeout=600)
    assert c.run("test", "-e", "/etc/mgsave/policy.yaml", check=False).returncode == 1

    # The same with `make install` (for other distributions), on the same host: it arms the
    # shutdown pass and starts no guest; `make uninstall` saves none.
    shutil.copytree(built.tree, c.root / SRC_IN_CONTAINER.lstrip("/"), ignore=IGNORE, symlinks=True)
    started = time.monotonic()
    c.run("make", "-C", SRC_IN_CONTAINER, "install")
    timings.append(("make install", time.monotonic() - started))
    assert _show(c, "mgsave.service", "ActiveState") == "active"
    assert _show(c, "mgsave.service", "FragmentPath") == "/usr/local/lib/systemd/system/mgsave.service"
    assert _show(c, "mgsave-boot.service", "ActiveState") == "inactive"
    assert c.run("/usr/local/bin/mgsave", "check").returncode == 0  # Debian's python3 and modules
    assert _domains(c) == before
    _no_pass_ran(c)
    c.run("make", "-C", SRC_IN_CONTAINER, "uninstall")
    assert _show(c, "mgsave.service", "ActiveState") == "inactive"
    assert _domains(c) == before
    _no_pass_ran(c)

    conn = c.connect()
    try:
        conn.lookupByName("pk-run").destroy()
    finally:
        conn.close()
    timings.append(("poweroff", c.poweroff()))
    print("\nthe package on a booted Debian 12 host:\n" + "\n".join(f"  {w:<44} {s:6.1f} s" for w, s in timings))
    for unit, (score, verdict, open_items) in exposure.items():
        print(f"  systemd-analyze security {unit}: {score} {verdict}")
        for item in open_items:
            print(f"    {item}")
