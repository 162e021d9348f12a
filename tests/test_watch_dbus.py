"""``mgsave watch`` on a real D-Bus system bus: only logind's broadcast starts the shutdown pass.

The bus is a private ``dbus-daemon`` with Debian's system-bus policy (tests/privatebus.py);
``mgsave watch`` runs as a process of its own, as mgsave-early.service runs it, and finds the
bus through ``DBUS_SYSTEM_BUS_ADDRESS``. logind and systemd are stand-ins on that bus (this
machine runs neither, and the test must not stop real units): the stand-in logind owns
``org.freedesktop.login1`` as the real one does, the stand-in systemd records the watcher's
``StopUnit`` (which would start the pass) and ``StartUnit``. The attacker is real: ``dbus-send``
run as ``nobody``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.privatebus import Logind, PrivateSystemBus, Systemd, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = "/usr/bin/python3"  # what the installed mgsave runs on, with Debian's jeepney


# This tree's virtualenv, and Debian's interpreter with the packages' jeepney (0.8 on Debian 12),
# which the installed mgsave runs on.
INTERPRETERS = [pytest.param([sys.executable], id="venv"), pytest.param([DEBIAN_PYTHON], id="debian")]


@pytest.fixture
def bus():
    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("dbus-send"):
        pytest.skip("needs root, setpriv and dbus-send (an unprivileged sender is run as nobody)")
    private = PrivateSystemBus()
    logind, systemd = Logind(private.address), Systemd(private.address)
    yield private, logind, systemd
    for stand_in in (logind, systemd):
        stand_in.close()
    private.close()


@pytest.fixture
def watcher(bus, tmp_path, request):
    """``mgsave watch`` with ``request.param``: the interpreter, or (the interpreter, a policy's text)."""
    interpreter, policy = request.param if isinstance(request.param, tuple) else (request.param, None)
    if interpreter == [DEBIAN_PYTHON] and subprocess.run([DEBIAN_PYTHON, "-c", "import jeepney, yaml"]).returncode:
        pytest.skip("Debian's python3-jeepney is not installed")
    private, logind, _systemd = bus
    log = tmp_path / "watch.log"
    env = {"PATH": os.environ["PATH"], "DBUS_SYSTEM_BUS_ADDRESS": private.address, "PYTHONPATH": str(ROOT),
           "PYTHONUNBUFFERED": "1"}
    if policy is not None:
        (tmp_path / "policy.yaml").write_text(policy)
        tmp_path.chmod(0o755)
        env["MGSAVE_POLICY"] = str(tmp_path / "policy.yaml")
    with open(log, "wb") as stderr:
        process = subprocess.Popen([*interpreter, "-m", "libmgsave", "watch"], env=env, stderr=stderr,
                                   stdout=subprocess.DEVNULL)
    process.log = log
    process.text = lambda: log.read_text()
    process.unique_name = wait_for(lambda: logind.callers("Inhibit"), "the watcher's delay lock")[0]
    yield process
    process.terminate()
    process.wait(timeout=30)


def send_as_nobody(address: str, *destination: str) -> None:
    """PrepareForShutdown(true) sent by an unprivileged user, as the issue reproduced it."""
    command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
               "dbus-send", f"--bus={address}", *destination, "--type=signal",
               "/org/freedesktop/login1", "org.freedesktop.login1.Manager.PrepareForShutdown", "boolean:true"]
    out = subprocess.run(command, capture_output=True, text=True)
    assert out.returncode == 0, f"the bus refused the signal: {out.stderr}"


@pytest.mark.parametrize("watcher", INTERPRETERS, indirect=True)
def test_only_logind_s_broadcast_starts_the_pass_and_a_cancelled_shutdown_re_arms(bus, watcher):
    private, logind, systemd = bus

    # A broadcast from a user who is not logind (the bus does not deliver it: the watcher's match
    # rule names logind), then one sent to the watcher's unique name (delivered whatever the
    # match rules say). Messages reach the watcher in the order they were sent, so once it has
    # logged the second, it would have acted on the first already.
    send_as_nobody(private.address)
    send_as_nobody(private.address, f"--dest={watcher.unique_name}")
    wait_for(lambda: "ignored a PrepareForShutdown signal" in watcher.text(), "the unicast signal ignored")
    assert systemd.called("StopUnit") == [], watcher.text()
    assert systemd.units["mgsave.service"]["ActiveState"] == "active"
    assert not logind.lock_released()

    # logind's own broadcast: the pass starts (mgsave.service is stopped) and the lock goes.
    logind.announce(True)
    wait_for(lambda: systemd.called("StopUnit"), "the watcher's StopUnit")
    assert systemd.called("StopUnit") == [("mgsave.service", "replace")]
    wait_for(logind.lock_released, "the delay lock released after the pass")
    assert "shutdown pass started" in watcher.text()

    # The shutdown is cancelled: the guests stay saved, which is said loudly; the pass is armed
    # again and the watcher waits with a new lock.
    logind.announce(False)
    wait_for(lambda: systemd.called("StartUnit"), "mgsave.service started again")
    assert systemd.called("StartUnit") == [("mgsave.service", "replace")]
    wait_for(lambda: len(logind.callers("Inhibit")) == 2, "a fresh delay lock")
    text = watcher.text()
    assert "mgsave: error: the shutdown was cancelled after the shutdown pass had run" in text
    assert "'mgsave boot'" in text and "mgsave-boot.service" in text
    assert watcher.poll() is None


@pytest.mark.parametrize("watcher", [[sys.executable]], indirect=True, ids=["venv"])
def test_a_restarted_logind_is_believed(bus, watcher):
    """The owner of logind's name is asked when a signal comes, not remembered from the start."""
    private, logind, systemd = bus
    logind.close()  # logind exits; a new one takes the name
    restarted = Logind(private.address)
    try:
        assert restarted.unique_name != logind.unique_name
        restarted.announce(True)
        wait_for(lambda: systemd.called("StopUnit"), "the watcher's StopUnit")
        assert "ignored" not in watcher.text()
    finally:
        restarted.close()


ON_REBOOT = "version: 1\ndefaults:\n  on_reboot: [shutdown, poweroff]\n"


@pytest.mark.parametrize("watcher", [([sys.executable], ON_REBOOT)], indirect=True, ids=["on_reboot"])
def test_with_on_reboot_chains_a_logind_that_names_no_kind_leaves_the_pass_to_systemd_s_job(bus, watcher):
    """systemd before 255 says no kind, and in logind's delay phase no job is queued yet: the
    watcher lets its lock go at once, so that systemd queues the job (reboot.target or
    poweroff.target) that the unit's stop then reads."""
    _private, logind, systemd = bus
    logind.announce(True)
    wait_for(logind.lock_released, "the delay lock released")
    assert systemd.called("StopUnit") == [], watcher.text()
    assert "logind does not say which kind of shutdown this is" in watcher.text()


@pytest.mark.parametrize("watcher", [([sys.executable], ON_REBOOT)], indirect=True, ids=["on_reboot"])
def test_with_on_reboot_chains_logind_s_kind_still_starts_the_pass_early(bus, watcher):
    _private, logind, systemd = bus
    logind.shutdown_type = "reboot"
    logind.announce(True)
    wait_for(lambda: systemd.called("StopUnit"), "the watcher's StopUnit")
    assert systemd.called("StopUnit") == [("mgsave.service", "replace")]
