"""A pass asked to stop (SIGTERM, SIGINT) on libvirt's test driver: it starts nothing new,
records what it did, and the guests it did not reach keep their saved state for the next boot.

In-process runs go through ``interrupt.request`` (a pass run in a thread cannot own the
process's signal handlers); one run in a subprocess gets a real SIGTERM.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from libmgsave import cli, interrupt, state
from tests.rig.mgsave import FOREIGN_ENV
from tests.testdriver import URI, define, has_image, hv, running  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
SLOW_BOOT = """
version: 1
limits: {max_parallel_starts: 1, start_delay: 60}
"""


@pytest.fixture(autouse=True)
def fresh_interrupt():
    interrupt.reset()
    yield
    interrupt.reset()


@pytest.fixture
def run(tmp_path, capsys):
    state_dir = tmp_path / "state"

    def run_mgsave(*args, policy: str = "version: 1\n"):
        path = tmp_path / "policy.yaml"
        path.write_text(policy)
        os.chmod(path, 0o644)
        code = cli.main(["--connect", URI, "--state-dir", str(state_dir), "--json", "--policy", str(path), *args])
        out, _err = capsys.readouterr()
        return code, (json.loads(out) if out.strip() else None)

    run_mgsave.state_dir = state_dir
    return run_mgsave


def in_thread(fn, *args, **kwargs):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("value", fn(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, box


def outcomes(result: dict) -> dict[str, str]:
    return {g["name"]: g["outcome"] for g in result["guests"]}


def test_a_boot_pass_stopped_midway_starts_nothing_more_and_a_later_boot_resumes_the_rest(hv, run):
    define(hv, "g1", "g2", "g3")
    code, _ = run("shutdown")
    assert code == 0 and all(has_image(hv, n) for n in ("g1", "g2", "g3"))

    # One start at a time, a minute apart: the first guest starts, the others wait for their turn.
    thread, box = in_thread(run, "boot", policy=SLOW_BOOT)
    deadline = time.monotonic() + 20
    while not running(hv) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(hv) == ["g1"]
    stopped_at = time.monotonic()
    interrupt.request(signal.SIGTERM)
    thread.join(10)
    assert not thread.is_alive(), "the boot pass did not stop promptly"
    assert time.monotonic() - stopped_at < 5
    code, result = box["value"]
    assert code == 128 + signal.SIGTERM
    assert result["interrupted"] == "SIGTERM" and result["ok"] is False
    assert outcomes(result) == {"g1": "resumed", "g2": "interrupted", "g3": "interrupted"}
    assert running(hv) == ["g1"]
    assert has_image(hv, "g2") and has_image(hv, "g3")  # their saved state is untouched
    boot_record = json.loads((run.state_dir / state.BOOT_RECORD).read_text())
    assert boot_record["interrupted"] == "SIGTERM"

    # The host goes down: the shutdown pass saves g1 again and keeps g2, g3 in its record.
    interrupt.reset()
    code, result = run("shutdown")
    assert code == 0 and outcomes(result) == {"g1": "saved", "g2": "skipped", "g3": "skipped"}
    record = json.loads((run.state_dir / state.SHUTDOWN_RECORD).read_text())
    assert {e["name"]: e["outcome"] for e in record["guests"].values()} == {
        "g1": "saved", "g2": "saved", "g3": "saved"}

    # The next boot resumes all three (if-running, by the record).
    code, result = run("boot")
    assert code == 0 and outcomes(result) == {"g1": "resumed", "g2": "resumed", "g3": "resumed"}
    assert running(hv) == ["g1", "g2", "g3"]


def stopped_boot_pass(hv, run) -> dict:
    """A boot pass (one start a minute) stopped once it has started its first guest."""
    thread, box = in_thread(run, "boot", policy=SLOW_BOOT)
    deadline = time.monotonic() + 20
    while not running(hv) and time.monotonic() < deadline:
        time.sleep(0.05)
    interrupt.request(signal.SIGTERM)
    thread.join(10)
    assert not thread.is_alive(), "the boot pass did not stop promptly"
    interrupt.reset()  # the host goes down: its shutdown pass is not stopped
    return box["value"][1]


def test_guests_a_stopped_boot_pass_never_reached_are_resumed_after_the_next_reboot(hv, run, reboot):
    """The host boots; its boot pass is stopped (the host goes down again) after g1; the shutdown
    pass of that boot is of another boot than the record it found. Before: it kept only what it
    saved itself, and the boot after skipped g2, g3, g4 (if-running, not in the record) although
    their images were there. Twice, to show they stay carried over until they are resumed."""
    define(hv, "g1", "g2", "g3", "g4")
    assert run("shutdown")[0] == 0
    reboot()
    result = stopped_boot_pass(hv, run)
    assert outcomes(result) == {"g1": "resumed", "g2": "interrupted", "g3": "interrupted", "g4": "interrupted"}
    code, result = run("shutdown")
    assert code == 0 and outcomes(result) == {"g1": "saved", "g2": "skipped", "g3": "skipped", "g4": "skipped"}
    reboot()
    result = stopped_boot_pass(hv, run)
    assert outcomes(result) == {"g1": "resumed", "g2": "interrupted", "g3": "interrupted", "g4": "interrupted"}
    assert run("shutdown")[0] == 0
    record = json.loads((run.state_dir / state.SHUTDOWN_RECORD).read_text())
    assert sorted(e["name"] for e in record["guests"].values()) == ["g1", "g2", "g3", "g4"]
    reboot()
    code, result = run("boot")
    assert code == 0 and outcomes(result) == {n: "resumed" for n in ("g1", "g2", "g3", "g4")}
    assert running(hv) == ["g1", "g2", "g3", "g4"]


def test_a_guest_the_admin_stopped_after_a_finished_boot_stays_off_after_the_next_reboot(hv, run, reboot):
    """The boot ID's protection stays: g2 ran (the boot pass resumed it), the admin stopped it; the
    next shutdown pass (another boot than its record's) does not carry it, the boot after
    leaves it off."""
    define(hv, "g1", "g2")
    assert run("shutdown")[0] == 0
    reboot()
    assert run("boot")[0] == 0
    hv.lookupByName("g2").destroy()
    assert run("shutdown")[0] == 0
    reboot()
    code, result = run("boot")
    assert code == 0 and outcomes(result) == {"g1": "resumed", "g2": "skipped"} and running(hv) == ["g1"]


def test_without_the_carry_over_a_completed_boot_pass_starts_a_fresh_record(hv, run):
    """The carry-over is only for a boot pass that was stopped: after a complete one, a guest
    that is off (the admin stopped it) is not started at the next boot."""
    define(hv, "g1", "g2")
    assert run("shutdown")[0] == 0
    assert run("boot")[0] == 0
    hv.lookupByName("g2").destroy()  # the admin shuts g2 down
    assert run("shutdown")[0] == 0
    code, result = run("boot")
    assert code == 0 and outcomes(result)["g2"] == "skipped" and running(hv) == ["g1"]


def test_a_pass_stopped_while_it_waits_for_the_lock_does_nothing(hv, run):
    define(hv, "g1", "g2")
    from libmgsave import lock

    with lock.pass_lock(run.state_dir, "test holder", wait=0):
        thread, box = in_thread(run, "shutdown", "--wait", "60")
        time.sleep(0.5)
        assert thread.is_alive()  # waiting for the lock
        interrupt.request(signal.SIGINT)
        thread.join(10)
        assert not thread.is_alive(), "the pass kept waiting for the lock"
    code, _ = box["value"]
    assert code == 128 + signal.SIGINT
    assert running(hv) == ["g1", "g2"]  # nothing was done
    assert not (run.state_dir / state.SHUTDOWN_RECORD).exists()


def test_a_real_sigterm_ends_a_boot_pass_with_its_summary(tmp_path):
    """A subprocess on a test-driver node file with guests off and 'autostart: always': the
    first starts, the next waits out start_delay; SIGTERM ends the pass within a second or two.

    The test waits for the pass's own status notification that the first guest has started
    (``STATUS=starting 1/3: a1`` on its ``$NOTIFY_SOCKET``, sent once the start went through),
    not for a log line: a datagram waits in the socket however slow the machine, and a log
    line goes to the journal instead of stderr when the test runs under systemd."""
    node = tmp_path / "node.xml"
    node.write_text("<node>" + "".join(
        # test:runstate 5: defined but shut off (the driver starts a node file's guests otherwise)
        f"<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'><name>{n}</name>"
        f"<memory>262144</memory><os><type>hvm</type></os><test:runstate>5</test:runstate></domain>"
        for n in ("a1", "a2", "a3")) + "</node>")
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nlimits: {max_parallel_starts: 1, start_delay: 300}\n"
                      "defaults: {autostart: always}\n")
    os.chmod(policy, 0o644)
    command = [sys.executable, "-m", "libmgsave", "--connect", f"test://{node}", "--policy", str(policy),
               "--state-dir", str(tmp_path / "state"), "--json", "boot"]
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    log = tmp_path / "stderr"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notifications:
        notifications.bind(str(tmp_path / "notify"))
        env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
        with open(log, "w") as stderr:
            proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        try:
            # Until the first guest has started (the next one then waits out start_delay).
            wait_for_status(notifications, "starting 1/3: a1", proc, timeout=STARTED_WITHIN)
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, _ = proc.communicate(timeout=60)
    err = log.read_text()
    assert time.monotonic() - sent < 30, "the pass did not stop promptly"
    assert proc.returncode == 128 + signal.SIGTERM, err
    result = json.loads(out)
    assert result["interrupted"] == "SIGTERM"
    assert outcomes(result) == {"a1": "started", "a2": "interrupted", "a3": "interrupted"}
    assert "stop requested (SIGTERM)" in err
    record = json.loads((tmp_path / "state" / state.BOOT_RECORD).read_text())
    assert record["interrupted"] == "SIGTERM"


# How long the subprocess may take to start Python, read its policy and start its first guest:
# seconds on an idle machine; generous, because a loaded CI machine is slow and only a hung
# pass should fail the test.
STARTED_WITHIN = 300.0


def wait_for_status(sock: socket.socket, wanted: str, proc: subprocess.Popen, *, timeout: float) -> None:
    """Until the process sends ``STATUS=<wanted>``; fails when it exits first or the time runs out."""
    give_up_at = time.monotonic() + timeout
    seen = []
    while True:
        left = give_up_at - time.monotonic()
        assert left > 0, f"no STATUS={wanted} within {timeout:g} s; seen: {seen}"
        assert proc.poll() is None, f"the pass exited ({proc.returncode}) before STATUS={wanted}; seen: {seen}"
        sock.settimeout(min(left, 1.0))  # a second at a time, to notice a pass that exited
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        seen.append(message)
        if f"STATUS={wanted}" in message.splitlines():
            return
