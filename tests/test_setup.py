"""The development set-up: what scripts/setup installs for the demo and for the tests, and the
Python build of the package (the editable install of .venv, the wheel pybuild makes for the .deb)."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
