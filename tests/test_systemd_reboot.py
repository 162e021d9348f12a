"""A reboot is not a power-off, with a real systemd: ``systemctl reboot`` runs each guest's
``on_reboot`` chain, ``systemctl poweroff`` its ``on_shutdown`` chain.

The policy gives every guest ``on_shutdown: [save, shutdown, poweroff]`` and ``on_reboot:
[shutdown, poweroff]``, so each guest's outcome tells which chain ran: ``shut-down`` at a reboot,
``saved`` at a power-off. One container a release, two boots:

  boot 1   two guests run; ``systemctl reboot``: systemd-nspawn ends with 133 (a container's
           reboot; the record is on the container's persistent /var/lib/mgsave); the shutdown
           record says ``reboot``, each guest ``shut-down``, no managed-save image
  boot 2   the boot pass starts both again (they were running); ``systemctl poweroff``: the record
           says ``poweroff``, each guest ``saved``, with its image

Debian 13 (systemd 257): logind says which kind (``PreparingForShutdownWithMetadata``), and
``mgsave watch`` starts the pass in logind's delay phase. Debian 12 (systemd 252): logind says
no kind, and in its delay phase no job is queued yet; with on_reboot chains in the policy the
watcher lets its lock go, and the pass, at the unit's stop, reads the kind from systemd's job.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.rig.container import Container, prepared_host, unavailable
from tests.rig.debian_root import RootBuildError, ensure_root
from tests.rig.guests import domain_xml
from tests.test_debian13 import PACKAGE_IN_HOST, package, uncaptured  # noqa: F401
from tests.test_systemd_boot import SRC, _copy_tree, _unavailable_reason, wait_boot_pass

pytestmark = [pytest.mark.systemd, pytest.mark.rig]

GUESTS = ("rb-1", "rb-2")
POLICY = """\
version: 1
connections: ['qemu:///system']
defaults:
  autostart: if-running
  on_shutdown: [save, shutdown, poweroff]
  on_reboot: [shutdown, poweroff]
"""
REBOOTED = 133  # systemd-nspawn's exit status when its container reboots


def shutdown_record(c: Container) -> dict:
    return json.loads((c.dir("mgsave") / "last-shutdown.json").read_text())


def outcomes(record: dict) -> dict[str, str]:
    return {entry["name"]: entry["outcome"] for entry in record["guests"].values()}


def has_image(c: Container, name: str) -> bool:
    return (c.dir("lib") / "qemu/save" / f"{name}.save").is_file()


def wait_booted(c: Container, boots: int, timeout: float = 300) -> None:
    """Until each guest has booted ``boots`` times and ticks in its latest boot."""
    deadline = time.monotonic() + timeout
    while not all(c.guest_boots(n) >= boots and c.serial(n).rstrip().rsplit(b"\n", 1)[-1].startswith(b"tick")
                  for n in GUESTS):
        if time.monotonic() > deadline:
            raise AssertionError(f"guests not booted {boots} times within {timeout} s: "
                                 f"{ {n: c.serial(n)[-200:] for n in GUESTS} }")
        time.sleep(0.5)


def pass_end_kind(c: Container, since: float) -> list[str]:
    from libmgsave import journal
    return [e.get("MGSAVE_SHUTDOWN_KIND") for e in c.journal("SYSLOG_IDENTIFIER=mgsave", f"MESSAGE_ID={journal.PASS_END}",
                                                             "MGSAVE_PASS=shutdown", since=since)]


def reboot_then_poweroff(c: Container, install) -> dict[str, str]:
    """Boot 1 (install, guests, reboot) and boot 2 (poweroff); each pass's why, for the report."""
    c.write("/etc/mgsave/policy.yaml", POLICY)
    c.boot()
    install(c)
    conn = c.connect()
    try:
        for name in GUESTS:
            conn.defineXML(domain_xml(name, memory_mib=160, fill_mib=16)).create()
    finally:
        conn.close()
    wait_booted(c, 1)

    since = time.time()
    c.go_down("reboot")
    assert c.exit_status == REBOOTED, f"systemd-nspawn exited {c.exit_status}:\n{c.console_tail()}"
    record = shutdown_record(c)
    assert record["host_shutdown"]["kind"] == "reboot", record["host_shutdown"]
    assert outcomes(record) == dict.fromkeys(GUESTS, "shut-down"), record
    assert not any(has_image(c, n) for n in GUESTS)
    assert pass_end_kind(c, since) == ["reboot"]
    whys = {"reboot": record["host_shutdown"]["why"]}

    c.boot()
    assert wait_boot_pass(c)["Result"] == "success"
    wait_booted(c, 2)
    since = time.time()
    c.go_down("poweroff")
    assert c.exit_status == 0, f"systemd-nspawn exited {c.exit_status}:\n{c.console_tail()}"
    record = shutdown_record(c)
    assert record["host_shutdown"]["kind"] == "poweroff", record["host_shutdown"]
    assert outcomes(record) == dict.fromkeys(GUESTS, "saved"), record
    assert all(has_image(c, n) for n in GUESTS)
    assert pass_end_kind(c, since) == ["poweroff"]
    whys["poweroff"] = record["host_shutdown"]["why"]
    return whys


def test_debian12_a_reboot_runs_on_reboot_a_poweroff_on_shutdown_by_systemd_s_job():
    reason = _unavailable_reason()
    if reason:
        unavailable(reason)
    with prepared_host("mgsave-reboot12-") as c:
        def install(c: Container) -> None:
            _copy_tree(c.root / SRC.lstrip("/"))
            c.run("make", "-C", SRC, "install")

        whys = reboot_then_poweroff(c, install)
    print(f"\nsystemd 252: {whys}")
    assert whys == {"reboot": "reboot.target has a start job", "poweroff": "poweroff.target has a start job"}


@pytest.mark.debian13
def test_debian13_a_reboot_runs_on_reboot_a_poweroff_on_shutdown_as_logind_says(package, pytestconfig):
    from tests.test_debian13 import _unavailable_reason as reason13
    reason = reason13()
    if reason:
        unavailable(reason)
    try:
        lower = ensure_root(log=uncaptured(pytestconfig))
    except RootBuildError as error:
        unavailable(f"cannot build the Debian 13 root: {error}")
    with prepared_host("mgsave-reboot13-", lower=lower) as c:
        def install(c: Container) -> None:
            target = c.root / PACKAGE_IN_HOST.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(package, target)
            c.run("dpkg", "--force-confold", "-i", PACKAGE_IN_HOST)  # keeps the policy written above

        whys = reboot_then_poweroff(c, install)
    print(f"\nsystemd 257: {whys}")
    assert whys == {"reboot": "logind announced a reboot", "poweroff": "logind announced a poweroff"}
