"""mgsave's Debian package, built from this checkout for a test or a benchmark to install."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".hypothesis", ".cache")


class DebBuildError(Exception):
    """``make deb`` is not possible here, or failed (the message says which)."""


def build_deb(workdir: Path) -> Path:
    """``make deb`` in a copy of the checkout under ``workdir`` (the checkout itself is left
    clean); returns the .deb."""
    tree = workdir / "mgsave"
    shutil.copytree(CHECKOUT, tree, ignore=_IGNORE, symlinks=True)
    # Debian's tools first: the package is built for Debian's /usr/bin/python3.
    env = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if subprocess.run(["make", "-C", str(tree), "-n", "deb"], capture_output=True, env=env).returncode != 0:
        raise DebBuildError("this tree has no 'make deb' target")
    out = subprocess.run(["make", "-C", str(tree), "deb"], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise DebBuildError(f"make deb exited {out.returncode}:\n{(out.stdout + out.stderr)[-3000:]}")
    debs = sorted((tree / "dist").glob("mgsave_*_all.deb"))
    if len(debs) != 1:
        raise DebBuildError(f"make deb made {debs} in dist/")
    return debs[0]
