"""One pass at a time: the flock on <state dir>/lock, between real processes.

The lock must name its holder when it refuses, wait when asked to, and never outlive its holder:
a pass killed with SIGKILL (or a host that lost power) must not block the next one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from libmgsave import lock, state
from libmgsave.errors import ExitCode, LockBusy

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import os, sys, time
from pathlib import Path
from libmgsave import lock
with lock.pass_lock(Path(sys.argv[1]), sys.argv[2], wait=float(sys.argv[3])):
    if len(sys.argv) > 4:   # a child started while holding the lock: it must not inherit it
        child = os.spawnlp(os.P_NOWAIT, "sleep", "sleep", sys.argv[4])
        while open(f"/proc/{child}/comm").read().strip() != "sleep":  # until it has exec'd
            time.sleep(0.01)
    print("locked", flush=True)
    time.sleep(float(sys.argv[5]) if len(sys.argv) > 5 else 60)
print("released", flush=True)
"""


def hold(state_dir: Path, what: str = "mgsave shutdown", *, wait: float = 0, child_sleep: str | None = None,
         hold_for: float = 60) -> subprocess.Popen:
    """Another process that takes the lock and holds it; returns once it holds it."""
    args = [sys.executable, "-c", HOLDER, str(state_dir), what, str(wait)]
    if child_sleep is not None or hold_for != 60:
        args += [child_sleep or "0", str(hold_for)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    line = proc.stdout.readline().strip()
    assert line == "locked", proc.stderr.read()
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def test_a_second_pass_is_refused_and_told_who_holds_the_lock(tmp_path):
    holder = hold(tmp_path, "mgsave shutdown")
    try:
        t0 = time.monotonic()
        with pytest.raises(LockBusy) as caught:
            with lock.pass_lock(tmp_path, "mgsave boot", wait=0):
                pytest.fail("got a lock that another process holds")
        assert time.monotonic() - t0 < 2
        assert f"pid {holder.pid}: mgsave shutdown" in caught.value.message
        assert caught.value.exit_code == ExitCode.BUSY
        # the refused pass did not overwrite the holder's name
        assert (tmp_path / "lock").read_text() == f"pid {holder.pid}: mgsave shutdown\n"
    finally:
        stop(holder)


def test_a_waiting_pass_gets_the_lock_when_the_holder_finishes(tmp_path):
    holder = hold(tmp_path, "mgsave shutdown", hold_for=1.5)
    try:
        t0 = time.monotonic()
        with lock.pass_lock(tmp_path, "mgsave boot", wait=30) as locked:
            waited = time.monotonic() - t0
            assert locked is True
            assert (tmp_path / "lock").read_text() == f"pid {os.getpid()}: mgsave boot\n"
        assert 0.5 < waited < 10
        assert holder.wait(timeout=10) == 0
    finally:
        stop(holder)


def test_a_waiting_pass_gives_up_after_its_wait(tmp_path):
    holder = hold(tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(LockBusy, match="gave up waiting after 1.5 s"):
            with lock.pass_lock(tmp_path, "mgsave boot", wait=1.5):
                pass
        assert 1.4 < time.monotonic() - t0 < 5
    finally:
        stop(holder)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = hold(tmp_path, "mgsave shutdown")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # its name is still in the file, but the kernel dropped the flock with the process
    assert f"pid {holder.pid}" in (tmp_path / "lock").read_text()
    t0 = time.monotonic()
    with lock.pass_lock(tmp_path, "mgsave shutdown", wait=0) as locked:
        assert locked is True
        assert (tmp_path / "lock").read_text() == f"pid {os.getpid()}: mgsave shutdown\n"
    assert time.monotonic() - t0 < 1
    stop(holder)


def test_a_child_process_of_the_holder_does_not_keep_the_lock(tmp_path):
    """The lock's file descriptor is close-on-exec: a process the holder started (libvirt may
    spawn helpers) must not keep the lock once the holder is gone."""
    holder = hold(tmp_path, "mgsave shutdown", child_sleep="30")
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with lock.pass_lock(tmp_path, "mgsave boot", wait=0) as locked:
            assert locked is True
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the orphaned sleep
        stop(holder)


def test_the_lock_is_released_when_the_body_raises(tmp_path):
    with pytest.raises(RuntimeError):
        with lock.pass_lock(tmp_path, "mgsave shutdown", wait=0):
            raise RuntimeError("boom")
    with lock.pass_lock(tmp_path, "mgsave shutdown", wait=0) as locked:
        assert locked is True


def test_the_state_dir_is_created(tmp_path):
    with lock.pass_lock(tmp_path / "a" / "b", "mgsave boot", wait=0) as locked:
        assert locked is True
    assert (tmp_path / "a" / "b" / "lock").is_file()


def test_an_unusable_state_dir_lets_the_pass_go_on_without_the_lock(tmp_path, caplog, monkeypatch):
    # An earlier in-process cli.main() set up mgsave's own handler, which stops propagation.
    monkeypatch.setattr(logging.getLogger("mgsave"), "propagate", True)
    (tmp_path / "file").write_text("in the way\n")
    with lock.pass_lock(tmp_path / "file" / "state", "mgsave shutdown", wait=0) as locked:
        assert locked is False
    assert "carrying on without the lock" in caplog.text


def run_cli(state_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    policy = state_dir.parent / "policy.yaml"
    if not policy.exists():
        policy.write_text("version: 1\nconnections: ['test:///default']\n")
        os.chmod(policy, 0o644)
    return subprocess.run([sys.executable, "-m", "libmgsave", args[0], "--state-dir", str(state_dir),
                           "--policy", str(policy), *args[1:]], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("command", ["shutdown", "boot"])
def test_the_cli_exits_3_with_wait_0_and_names_the_holder(tmp_path, command):
    state_dir = tmp_path / "state"
    holder = hold(state_dir, "mgsave shutdown")
    try:
        proc = run_cli(state_dir, command, "--wait", "0")
        assert proc.returncode == ExitCode.BUSY, proc.stderr
        assert f"another mgsave pass is running (pid {holder.pid}: mgsave shutdown)" in proc.stderr
        assert "--wait" in proc.stderr  # the hint
        # nothing was touched: no record was started
        assert not (state_dir / state.SHUTDOWN_RECORD).exists()
        assert not (state_dir / state.BOOT_RECORD).exists()
    finally:
        stop(holder)


def test_the_cli_waits_for_the_holder_then_runs(tmp_path):
    state_dir = tmp_path / "state"
    holder = hold(state_dir, "mgsave boot", hold_for=2)
    try:
        t0 = time.monotonic()
        proc = run_cli(state_dir, "shutdown", "--wait", "30", "--json")
        assert proc.returncode == ExitCode.OK, proc.stderr
        assert time.monotonic() - t0 > 1.5
        result = json.loads(proc.stdout)
        # a fresh test:///default has one running guest, 'test'
        assert {g["name"]: g["outcome"] for g in result["guests"]} == {"test": "saved"}
        record = state.read_record(state_dir / state.SHUTDOWN_RECORD, "shutdown")
        assert {g["name"]: g["outcome"] for g in record["guests"].values()} == {"test": "saved"}
    finally:
        stop(holder)


def test_a_dry_run_needs_no_lock(tmp_path):
    state_dir = tmp_path / "state"
    holder = hold(state_dir, "mgsave shutdown")
    try:
        proc = run_cli(state_dir, "shutdown", "--dry-run", "--wait", "0")
        assert proc.returncode == ExitCode.OK, proc.stderr
        assert "dry run" in proc.stdout
    finally:
        stop(holder)


def test_the_lock_file_is_root_s_alone(tmp_path):
    """Anyone who can open the lock can flock it and keep every pass waiting: it is 0600, an
    older one readable by all is made so, and one owned by another user is not used."""
    import stat as stat_module

    from libmgsave import lock

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with lock.pass_lock(state_dir, "test", wait=0) as locked:
        assert locked
    assert stat_module.S_IMODE(os.stat(state_dir / "lock").st_mode) == 0o600
    os.chmod(state_dir / "lock", 0o644)
    with lock.pass_lock(state_dir, "test", wait=0) as locked:
        assert locked
    assert stat_module.S_IMODE(os.stat(state_dir / "lock").st_mode) == 0o600
    if os.geteuid() == 0:
        os.chown(state_dir / "lock", 65534, 65534)
        with lock.pass_lock(state_dir, "test", wait=0) as locked:
            assert not locked, "a lock file another user owns (and may hold) is not waited for"


def test_a_pass_in_an_insecure_state_directory_does_not_wait_for_its_lock(tmp_path):
    """Whoever can write there can hold the lock: the shutdown pass would wait its whole
    deadline, then give up without saving a guest. It runs without the lock instead."""
    import fcntl

    from libmgsave import cli

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.chmod(state_dir, 0o777)
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nconnections: ['test:///default']\n")
    fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held by "someone else"
        code = cli.main(["shutdown", "--state-dir", str(state_dir), "--policy", str(policy), "--wait", "0"])
    finally:
        os.close(fd)
    assert code == 1  # the guests were handled; the unsafe directory is reported (not 3, "busy")
