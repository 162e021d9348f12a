"""The development set-up: what scripts/setup installs for the demo and for the tests, and the
Python build of the package (the editable install of .venv, the wheel pybuild makes for the .deb)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                ".hypothesis", ".cache")

# What setuptools says when a directory of the package holds data but is no declared package.
SETUPTOOLS_COMPLAINTS = ("SetuptoolsDeprecationWarning", "absent from the `packages` configuration",
                         "as data is deprecated")

BUILD = """
import sys
from setuptools import build_meta
print("wheel:", build_meta.build_wheel(sys.argv[1]))
print("editable:", build_meta.build_editable(sys.argv[2]))
"""


def test_the_python_build_prints_no_setuptools_deprecation(tmp_path):
    """Debian's setuptools, as pybuild runs it for the .deb (the editable install of scripts/setup
    runs the same build_py with pip's newer setuptools), in a copy of the tree."""
    python = "/usr/bin/python3"
    if subprocess.run([python, "-c", "import setuptools.build_meta"], capture_output=True).returncode:
        pytest.skip("Debian's python3-setuptools is not installed (scripts/setup installs it)")
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=IGNORE, symlinks=True)
    out = subprocess.run([python, "-W", "default", "-c", BUILD, str(tmp_path / "wheel"),
                          str(tmp_path / "editable")], cwd=tree,
                         capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    for complaint in SETUPTOOLS_COMPLAINTS:
        assert complaint not in log, log[-4000:]
    wheel = next((tmp_path / "wheel").glob("mgsave-*-py3-none-any.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    schemas = sorted(p.name for p in (ROOT / "libmgsave/schemas").glob("*.schema.json"))
    assert schemas and sorted(n.split("/")[-1] for n in names if n.startswith("libmgsave/schemas/")) == schemas
    assert "libmgsave/policy.schema.yaml" in names
    assert not [n for n in names if "__pycache__" in n]


# -- what scripts/setup installs -----------------------------------------------------------------

SETUP = ROOT / "scripts" / "setup"
# What a hypervisor an admin cares about should not get from the demo.
NOT_FOR_THE_DEMO = {"chromium", "zsh", "debootstrap", "gcc", "python3-dev", "libvirt-dev", "libsystemd-dev",
                    "python3-pip", "python3-venv", "lintian", "debhelper", "systemd-container", "iptables"}


def setup_packages(*profile: str) -> list[str]:
    out = subprocess.run([str(SETUP), *profile, "--list"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_the_demo_installs_only_part_of_what_the_tests_install():
    demo, everything = setup_packages("--demo"), setup_packages()
    assert demo and len(set(demo)) == len(demo)
    assert set(demo) < set(everything)
    assert not set(demo) & NOT_FOR_THE_DEMO, set(demo) & NOT_FOR_THE_DEMO
    assert NOT_FOR_THE_DEMO <= set(everything)


def test_setup_refuses_an_unknown_option():
    out = subprocess.run([str(SETUP), "--everything", "--list"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "usage: scripts/setup [--demo] [--list]" in out.stderr


def _installed_depends() -> dict[str, set[str]]:
    """Every installed package -> the packages it depends on (every alternative, virtual names as
    they are written), from one dpkg-query."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}\t${Package}\t${Provides}\t${Depends}, "
                          "${Pre-Depends}\n"], capture_output=True, text=True, check=True).stdout
    depends: dict[str, set[str]] = {}
    for line in out.splitlines():
        status, package, provides, wanted = line.split("\t")
        if status != "installed":
            continue
        names = {re.split(r"[\s:(]", d.strip())[0] for d in re.split(r"[,|]", wanted) if d.strip()}
        depends.setdefault(package, set()).update(names)
        for virtual in (re.split(r"[\s(]", p.strip())[0] for p in provides.split(",") if p.strip()):
            depends.setdefault(virtual, set()).add(package)
    return depends


def _closure(packages: list[str], depends: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(packages)
    while todo:
        package = todo.pop()
        if package not in seen:
            seen.add(package)
            todo.extend(depends.get(package, ()))
    return seen


def _owner(path: str) -> str:
    out = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True)
    assert out.returncode == 0, f"{path} belongs to no Debian package: {out.stderr}"
    return out.stdout.split(":")[0]


# What the demo's Python imports: the rig's library and every module of mgsave, on Debian's python3.
DEMO_IMPORTS = """
import importlib, pkgutil, sys
before = set(sys.modules)
sys.path.insert(0, sys.argv[1])
import libmgsave, tests.rig
for module in pkgutil.walk_packages(libmgsave.__path__, "libmgsave."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
for name in set(sys.modules) - before:
    print(getattr(sys.modules[name], "__file__", None) or "")
"""


def test_the_demo_installs_everything_it_uses():
    """The rig's programs and configuration and mgsave's Python modules come from the demo's
    packages or what they depend on (on this machine, set up with the tests' packages)."""
    out = subprocess.run(["/usr/bin/python3", "-c", DEMO_IMPORTS, str(ROOT)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    if "No module named" in out.stderr:
        pytest.skip(f"Debian's python3 lacks mgsave's modules (scripts/setup installs them): {out.stderr[-300:]}")
    assert out.returncode == 0, out.stderr
    modules = {line for line in out.stdout.splitlines() if line.startswith("/usr/lib/python3/")}
    assert any("/libvirt" in m for m in modules) and any("/yaml/" in m for m in modules)
    from tests.rig.daemon import REQUIRED_BINARIES, _which
    programs = [_which(name) for name in REQUIRED_BINARIES]
    if None in programs:
        pytest.skip("the rig's programs are not installed (scripts/setup installs them)")
    used = [*programs, "/bin/busybox", *map(str, Path("/etc/libvirt").glob("*.conf")), *modules]
    owners = {path: _owner(os.path.realpath(path) if path.startswith("/usr/lib/python3") else path)
              for path in used}
    provided = _closure(setup_packages("--demo"), _installed_depends())
    missing = {path: owner for path, owner in owners.items() if owner not in provided}
    assert not missing, f"the demo uses what scripts/setup --demo does not install: {missing}"


def test_setup_for_the_demo_builds_no_virtualenv(tmp_path):
    """In a copy of the scripts, with the demo's packages installed: nothing but the check."""
    demo = setup_packages("--demo")
    status = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}\n", *demo], capture_output=True, text=True)
    if status.stdout.split() != ["installed"] * len(demo):
        pytest.skip("the demo's packages are not all installed here (scripts/setup installs them)")
    (tmp_path / "scripts").mkdir()
    shutil.copy(SETUP, tmp_path / "scripts" / "setup")
    out = subprocess.run([str(tmp_path / "scripts" / "setup"), "--demo"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / ".venv").exists() and "installing" not in out.stderr
