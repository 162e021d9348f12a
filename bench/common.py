"""Shared pieces of the benchmarks: timing, statistics, the mgsave command, policies, guests."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
URI = "qemu:///system"


# --- statistics and printing -------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], unit: str = "s", digits: int = 2) -> str:
    """'median (min-max)' of a list of measurements."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} {unit}"
    return f"{median(values):.{digits}f} {unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(row)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def say(*parts: object) -> None:
    print(*parts, flush=True)


def note(text: str) -> None:
    """Progress for a human, on stderr (the figures go to stdout)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


# --- commands ---------------------------------------------------------------------------------


def mgsave_command() -> list[str]:
    """The installed ``mgsave`` entry point of this interpreter's environment (what an admin runs),
    else ``python -m libmgsave``."""
    script = Path(sys.executable).parent / "mgsave"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "libmgsave"]


def run_timed(argv: list[str], *, env: dict | None = None, log: Path | None = None,
              check: bool = True, stdout_file: Path | None = None, ok: tuple[int, ...] = (0,)) -> tuple[float, int]:
    """Run a command to completion; returns (wall seconds, peak RSS of the child in KiB).
    ``check``: raise unless it exits with one of ``ok``."""
    out = open(stdout_file or log or os.devnull, "ab")
    err = open(log or os.devnull, "ab")
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                cwd=REPO)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        out.close()
        err.close()
    if check and proc.returncode not in ok:
        tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}\n{tail}")
    return seconds, usage.ru_maxrss


def run_parallel(argvs: list[list[str]], *, log: Path | None = None) -> float:
    """Start every command at once, wait for all; returns wall seconds. Fails if any failed."""
    err = open(log or os.devnull, "ab")
    try:
        t0 = time.perf_counter()
        procs = [subprocess.Popen(a, stdin=subprocess.DEVNULL, stdout=err, stderr=err) for a in argvs]
        codes = [p.wait() for p in procs]
        seconds = time.perf_counter() - t0
    finally:
        err.close()
    bad = [" ".join(a) for a, c in zip(argvs, codes) if c != 0]
    if bad:
        raise RuntimeError(f"failed: {bad}")
    return seconds


def write_policy(directory: Path, *, parallel: int | str = "auto", deadline: float = 900,
                 extra: str = "", name: str | None = None) -> Path:
    """A policy that saves every running guest and resumes it at boot (the built-in behaviour,
    written out), with the given parallelism limits; ``extra`` goes on under ``defaults:``.
    Root-owned, not writable by others."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = directory / (name or f"policy-{parallel}.yaml")
    path.write_text(
        "version: 1\n"
        f"connections: ['{URI}']\n"
        "limits:\n"
        f"  max_parallel_saves: {parallel}\n"
        f"  max_parallel_starts: {parallel}\n"
        f"  shutdown_deadline: {deadline:g}\n"
        "defaults:\n"
        "  autostart: if-running\n"
        "  on_shutdown: [save, shutdown, poweroff]\n"
        + extra
    )
    os.chmod(path, 0o644)
    return path


# --- the machine ------------------------------------------------------------------------------


def machine_description() -> dict:
    """Cores, memory and versions, for the report (no paths)."""
    info = {"cores": os.cpu_count()}
    try:
        with open("/proc/meminfo") as f:
            kib = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
        info["memory"] = f"{kib / 2**20:.1f} GiB"
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            model = re.search(r"model name\s*:\s*(.*)", f.read())
        if model:
            info["cpu"] = model.group(1).strip()
    except OSError:
        pass
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    try:
        import libvirt

        v = libvirt.getVersion()
        info["libvirt"] = f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
    except Exception:  # noqa: BLE001 - informational only
        pass
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        first = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        m = re.search(r"version (\S+)", first)
        info["qemu"] = m.group(1) if m else first
    try:
        with open("/etc/debian_version") as f:
            info["debian"] = f.read().strip()
    except OSError:
        pass
    return info


def foreign_guests() -> int:
    """QEMU processes on this machine outside our mount namespace (others using the cores)."""
    mine = os.stat("/proc/self/ns/mnt").st_ino
    count = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")[0]
            if b"qemu-system" in cmd and os.stat(f"/proc/{d}/ns/mnt").st_ino != mine:
                count += 1
        except OSError:
            continue
    return count


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"mgsave-bench-{prefix}-"))


def dump_json(path: Path | None, data: object) -> None:
    if path:
        path.write_text(json.dumps(data, indent=1, default=str) + "\n")
