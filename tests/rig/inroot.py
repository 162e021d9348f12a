"""The rig tier's tests run inside another Debian root: its libvirtd, its QEMU, its python3 and
python3-libvirt, with this checkout's mgsave and tests.

One ``systemd-nspawn`` run (no systemd boot: the rig starts its own daemons) over a throw-away
overlay of the root, in a private mount namespace of its own:

    unshare --mount --propagation private sh -c 'mount -t overlay ... <root overlay> &&
        exec systemd-nspawn -D <root overlay> --as-pid2 --private-network
             --bind-ro=<this checkout> --bind-ro=<the guest image> --bind=<out>
             sh -c "<versions>; python3 -m pytest <args> --junitxml=<out>/junit.xml"'

The checkout and the guest image (built here beforehand by ``tests.rig.image.ensure_image`` and
named to the inner rig by ``$MGSAVE_RIG_IMAGE``) appear at the same paths inside, read-only. The
overlay's upper layer is on disk (the inner rig's save images land in its ``/var/tmp``); the mount
goes away with the namespace, whatever happens, and the working directory
(``/var/tmp/mgsave-inroot-*``, or under ``$MGSAVE_RIG_TMPDIR``) is removed afterwards, or by the
next run if its owner died. The inner session runs with ``CI=true``: a rig that cannot start in
there fails its tests instead of skipping them.

    python3 -m tests.rig.inroot [PYTEST ARGS...]    by hand: the Debian 13 root (built if needed),
                                                    default: the tests ``DEFAULT_TESTS`` names
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .daemon import DEFAULT_PARENT, _is_zombie, _start_time
from .image import PREBUILT_ENV, ensure_image

CHECKOUT = Path(__file__).resolve().parents[2]
WORKDIR_PREFIX = "mgsave-inroot-"
OUT = "/var/tmp/mgsave-inroot-out"      # inside: junit.xml and versions.json, bound from the workdir
# What runs inside by default, in one session: the e2e cycle, the faults (the fallback chain,
# daemon and mgsave killed mid-pass, damaged images...) and the parallel save channels (only
# libvirt 11.2 has them). The rest of the rig tier (the rig's own tests, deadline, load, agent,
# peers) adds time, not much about libvirt 11.
DEFAULT_TESTS = ("tests/test_e2e_rig.py", "tests/test_faults.py", "tests/test_channels_rig.py",
                 "tests/test_restore_params_rig.py", "tests/test_image_format_rig.py")
_SUMMARY = re.compile(r"^=+ (.+ in [0-9.]+s.*?) =+$", re.M)
NO_OVERLAY = 97   # the exit status of the wrapper when the overlay cannot be mounted
TOOLS = ("unshare", "mount", "systemd-nspawn")
VERSIONS_SCRIPT = r"""
import json, subprocess, sys
import libvirt
def first_line(*cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    return ((out.stdout + out.stderr).strip().splitlines() or ["?"])[0]
conn = libvirt.open("test:///default")
json.dump({
    "python3": sys.version.split()[0],
    "python3-libvirt": first_line("dpkg-query", "-W", "-f", "${Version}", "python3-libvirt"),
    "binding": libvirt.__file__,
    "libvirt library": conn.getLibVersion(),
    "libvirtd": first_line("libvirtd", "--version"),
    "qemu": first_line("qemu-system-x86_64", "--version"),
    "pytest": first_line(sys.executable, "-m", "pytest", "--version"),
}, open(sys.argv[1], "w"), indent=1)
"""


class InrootError(Exception):
    """The inner run could not be set up (a tool missing, the overlay not mountable...)."""


@dataclass
class InnerRun:
    returncode: int
    seconds: float
    output: str
    versions: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)      # tests, failures, errors, skipped (junit)
    durations: list = field(default_factory=list)   # (seconds, test), slowest first
    outcomes: list = field(default_factory=list)    # (test, passed|failed|error|skipped|xfail)

    @property
    def summary(self) -> str:
        """pytest's summary line ("==== 24 passed in 612.3s ===="), without the ='s."""
        found = _SUMMARY.findall(re.sub(r"\x1b\[[0-9;]*m", "", self.output))
        return found[-1] if found else "(no pytest summary line in the output)"

    @property
    def passed(self) -> int:
        c = self.counts
        return c.get("tests", 0) - c.get("failures", 0) - c.get("errors", 0) - c.get("skipped", 0)


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        return f"{', '.join(missing)} not installed (scripts/setup installs systemd-container)"
    return None


def sweep_stale(parent: str) -> None:
    """Working directories of runs whose owner died (its overlay went with its namespace)."""
    for wd in Path(parent).glob(WORKDIR_PREFIX + "*"):
        try:
            owner = json.loads((wd / "owner.json").read_text())
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                if time.time() - wd.stat().st_mtime < 3600:
                    continue   # being set up right now
            owner = {}
        pid = owner.get("pid")
        if pid and _start_time(pid) == owner.get("start_time") and not _is_zombie(pid):
            continue
        shutil.rmtree(wd, ignore_errors=True)


# Set inside: a test may change the root's files there (the overlay is thrown away afterwards).
THROWAWAY_ENV = "MGSAVE_RIG_THROWAWAY_ROOT"


def run_tests(root: Path, pytest_args: list[str], *, timeout: float = 3600, log=None) -> InnerRun:
    """``python3 -m pytest <pytest_args>`` inside ``root`` (see the module docstring).

    Raises InrootError when it cannot be started; the inner tests' own failures are in the result.
    ``log`` (if given) gets the inner output line by line, as it comes."""
    command = ("exec python3 -m pytest -p no:cacheprovider --junitxml={out}/junit.xml "
               + " ".join(shlex.quote(a) for a in pytest_args))
    return run_inside(root, command, timeout=timeout, log=log)


def run_inside(root: Path, shell_command: str, *, timeout: float = 3600, log=None,
               keep_out: Path | None = None) -> InnerRun:
    """``sh -c <shell_command>`` inside ``root``, from the checkout, after recording the versions;
    ``{out}`` in the command is the directory (inside) whose files come back: junit.xml is parsed
    into the result, and with ``keep_out`` every file there is copied to that directory."""
    reason = unavailable_reason()
    if reason:
        raise InrootError(reason)
    image = ensure_image().kernel.parent
    parent = os.environ.get("MGSAVE_RIG_TMPDIR") or DEFAULT_PARENT
    sweep_stale(parent)
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=parent))
    try:
        owner = {"pid": os.getpid(), "start_time": _start_time(os.getpid())}
        (workdir / "owner.json").write_text(json.dumps(owner))
        for name in ("upper", "work", "root", "out"):
            (workdir / name).mkdir()
        overlay = f"lowerdir={root},upperdir={workdir}/upper,workdir={workdir}/work"
        inner = (f"python3 - {OUT}/versions.json <<'EOF'\n{VERSIONS_SCRIPT}\nEOF\n"
                 + shell_command.replace("{out}", OUT))
        nspawn = [
            "systemd-nspawn", "-D", f"{workdir}/root", f"--machine={re.sub('[^A-Za-z0-9-]', 'x', workdir.name)}", "--quiet",
            "--register=no", "--keep-unit", "--as-pid2", "--private-network", "--console=pipe", f"--chdir={CHECKOUT}",
            f"--bind-ro={CHECKOUT}", f"--bind-ro={image}", f"--bind={workdir}/out:{OUT}",
            f"--setenv={PREBUILT_ENV}={image}", f"--setenv={THROWAWAY_ENV}=1", "--setenv=CI=true", "--setenv=PYTHONDONTWRITEBYTECODE=1",
            "--setenv=PYTHONUNBUFFERED=1", "--setenv=LANG=C.UTF-8", "--setenv=HOME=/root",
            "sh", "-c", inner,
        ]
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f"mount -t overlay overlay -o {shlex.quote(overlay)} {workdir}/root || exit {NO_OVERLAY}; "
                   'exec "$@"',
                   "sh", *nspawn]
        started = time.monotonic()
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        lines: list[str] = []

        def read() -> None:
            for line in proc.stdout:
                lines.append(line)
                if log:
                    log(line.rstrip("\n"))
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # nspawn and everything in its PID namespace (the rig, QEMU) go with it.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            lines.append(f"\n(inner run killed after {timeout:.0f} s)\n")
        finally:
            if proc.poll() is None:    # interrupted (^C)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            reader.join(timeout=30)
        if proc.returncode == NO_OVERLAY:
            raise InrootError(f"cannot mount an overlay of {root}:\n{''.join(lines)[-2000:]}")
        run = InnerRun(proc.returncode, time.monotonic() - started, "".join(lines))
        out = workdir / "out"
        if keep_out is not None:
            shutil.copytree(out, keep_out, dirs_exist_ok=True)
        with contextlib.suppress(OSError, ValueError):
            run.versions = json.loads((out / "versions.json").read_text())
        with contextlib.suppress(OSError, ET.ParseError):
            suite = ET.parse(out / "junit.xml").getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            run.counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            for case in suite.iter("testcase"):
                name = f"{case.get('classname')}::{case.get('name')}"
                run.durations.append((float(case.get("time", 0)), name))
                run.outcomes.append((name, _outcome(case)))
            run.durations.sort(reverse=True)
        return run
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _outcome(case: ET.Element) -> str:
    for kind in ("failure", "error"):
        if case.find(kind) is not None:
            return "failed" if kind == "failure" else "error"
    skipped = case.find("skipped")
    if skipped is not None:
        return "xfail" if skipped.get("type") == "pytest.xfail" else "skipped"
    return "passed"


def main(argv: list[str]) -> int:
    from .debian_root import RootBuildError, ensure_root
    try:
        root = ensure_root(log=lambda line: print(line, file=sys.stderr, flush=True))
        run = run_tests(root, argv or ["-ra", *DEFAULT_TESTS], log=print)
    except (RootBuildError, InrootError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"inner run: exit {run.returncode} after {run.seconds:.0f} s; {json.dumps(run.versions)}")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
