"""The proof with a real systemd: a host boots, runs guests, powers off, boots again.

The "host" is this machine's own root filesystem booted by ``systemd-nspawn -b`` with systemd as
PID 1 (``tests.rig.container``: an overlay over ``/``, persistent binds for what a real host
keeps on disk). The container has a private network (only loopback): ``make install`` uses
the Debian packages of mgsave's dependencies, which scripts/setup installs on this machine.

test_mgsave_host_lifecycle asserts; test_libvirt_guests_round_trip runs a plain poweroff and
boot with Debian's libvirt-guests (ON_SHUTDOWN=suspend, ON_BOOT=start) for comparison and only
reports; test_a_failed_image_is_kept_beside_libvirts_under_the_units keeps an image that failed
to resume inside the boot unit's sandbox.
Run with ``-s`` to see the timings; docs/SYSTEMD.md has the numbers of a run.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.rig.container import Container, prepared_host, unavailable
from tests.rig.guests import domain_xml

pytestmark = [pytest.mark.systemd, pytest.mark.rig]

ROOT = Path(__file__).resolve().parent.parent
# Three guests with 256 MiB of random memory, and one with none: its save is over the moment
# QEMU exits, which is when a shutdown not ordered after libvirtd.service loses the daemon.
FILL_MIB = {"mg-1": 256, "mg-2": 256, "mg-3": 256, "mg-4": 0}
GUESTS = tuple(FILL_MIB)
SRC = "/usr/src/mgsave"  # where the container gets its copy of this tree
SRC = "/usr/src/mgsave"  # where the container gets its copy of this tree
POLICY = """\
version: 1
connections: ['qemu:///system']
defaults:
  autostart: if-running
  on_shutdown: [save, shutdown, poweroff]
"""
LIBVIRT_GUESTS_DEFAULTS = """\
URIS=qemu:///system
ON_BOOT=start
ON_SHUTDOWN=suspend
SHUTDOWN_TIMEOUT=300
"""
def _unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("systemd-nspawn", "nsenter", "journalctl", "make"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    for path in ("/usr/sbin/libvirtd", "/usr/bin/qemu-system-x86_64", "/lib/systemd/systemd"):
        if not os.path.exists(path):
            return f"{path} is missing"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not importable"
    return None


def _copy_tree(into: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis", ".cache")
    shutil.copytree(ROOT, into, ignore=ignore, symlinks=True)


@pytest.fixture
def container():
    reason = _unavailable_reason()
    if reason:
        unavailable(reason)
    with prepared_host("mgsave-nspawn-") as c:
        yield c


# --- the scenario --------------------------------------------------------------------------------


@dataclass
class Timings:
    rows: list[tuple[str, float]] = field(default_factory=list)

    def add(self, what: str, seconds: float) -> None:
        self.rows.append((what, seconds))

    def __str__(self) -> str:
        return "\n".join(f"  {what:<52} {seconds:7.1f} s" for what, seconds in self.rows)


def start_guests(c: Container, timings: Timings) -> None:
    conn = c.connect()
    try:
        for name in GUESTS:
            conn.defineXML(domain_xml(name, fill_mib=FILL_MIB[name]))
        started = time.monotonic()
        for name in GUESTS:
            conn.lookupByName(name).create()
    finally:
        conn.close()
    c.wait_ticking(GUESTS)
    timings.add(f"{len(GUESTS)} guests boot and fill their memory", time.monotonic() - started)


def guest_states(c: Container, names=GUESTS) -> dict[str, tuple[int, int]]:
    conn = c.connect()
    try:
        return {name: tuple(conn.lookupByName(name).state()) for name in names}
    finally:
        conn.close()


RUNNING_RESTORED = (1, 3)  # VIR_DOMAIN_RUNNING, VIR_DOMAIN_RUNNING_RESTORED


def pass_window(entries: list[dict], kind: str) -> tuple[float, float] | None:
    from libmgsave import journal

    start = [e for e in entries if e.get("MESSAGE_ID") == journal.PASS_START and e.get("MGSAVE_PASS") == kind]
    end = [e for e in entries if e.get("MESSAGE_ID") == journal.PASS_END and e.get("MGSAVE_PASS") == kind]
    if not start or not end:
        return None
    return int(start[-1]["__REALTIME_TIMESTAMP"]) / 1e6, int(end[-1]["__REALTIME_TIMESTAMP"]) / 1e6


def first_realtime(entries: list[dict], pattern: str) -> float | None:
    for entry in entries:
        if re.search(pattern, str(entry.get("MESSAGE", ""))):
            return int(entry["__REALTIME_TIMESTAMP"]) / 1e6
    return None


# Boots 2 and 3: mg-1 never becomes ready (the test guest has no guest agent) and mg-2 is after
# it, so the boot pass is still waiting when the host goes down again.
WAITING_POLICY = POLICY + """\
guests:
  - match: {name: mg-1}
    ready: {agent: 10m}
  - match: {name: mg-2}
    after: [mg-1]
"""
SAVED_BEFORE_INSTALL = "mg-saved"  # has a managed-save image when mgsave is installed


def unit_state(c: Container, unit: str) -> dict[str, str]:
    out = c.run("systemctl", "show", "-p", "ActiveState,Result,ExecMainStatus,ExecMainStartTimestampMonotonic",
                unit).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_boot_pass(c: Container, timeout: float = 300) -> dict[str, str]:
    """mgsave-boot.service is Type=exec: the boot counts as finished while the pass still runs."""
    deadline = time.monotonic() + timeout
    while True:
        state = unit_state(c, "mgsave-boot.service")
        if state["ActiveState"] in ("inactive", "failed") and state["ExecMainStartTimestampMonotonic"] != "0":
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"the boot pass did not end within {timeout} s: {state}")
        time.sleep(0.5)


def wait_states(c: Container, want: dict[str, tuple[int, int] | int], timeout: float = 120) -> None:
    """Until each named guest is in the given (state, reason), or state."""
    deadline = time.monotonic() + timeout
    while True:
        states = guest_states(c, want)
        if all(states[n] == w or (isinstance(w, int) and states[n][0] == w) for n, w in want.items()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"guests not in {want} after {timeout} s: {states}")
        time.sleep(0.5)


def assert_resumed(c: Container, names, last_tick: dict[str, int], boots_before: dict[str, int]) -> None:
    """Each guest runs its old memory on: the first tick after the save is the last one before + 1."""
    c.wait_ticking(names, after=last_tick)
    for name in names:
        ticks = c.ticks(name)
        after_save = ticks[len(ticks) - 1 - ticks[::-1].index(last_tick[name]) + 1]
        assert after_save == last_tick[name] + 1, f"{name}: tick {last_tick[name]}, then {after_save}"
        assert c.guest_boots(name) == boots_before[name], f"{name} was cold-booted"


def save_before_install(c: Container) -> None:
    conn = c.connect()
    try:
        dom = conn.defineXML(domain_xml(SAVED_BEFORE_INSTALL, fill_mib=0))
        dom.create()
    finally:
        conn.close()
    c.wait_ticking([SAVED_BEFORE_INSTALL])
    conn = c.connect()
    try:
        conn.lookupByName(SAVED_BEFORE_INSTALL).managedSave(0)
    finally:
        conn.close()


# systemd-nspawn gives each boot of the container a boot ID of its own, but through a bind mount
# over /proc/sys/kernel/random/boot_id that mgsave's units do not see: ProtectProc= mounts them a
# procfs of their own, which shows the kernel's (this machine's: the same at every "reboot"),
# where a real reboot changes the kernel's. A unit without that sandbox copies the container's
# ID to /run at each boot, and a drop-in binds it into mgsave's units in the kernel's place.
BOOT_ID_UNIT = """\
[Unit]
Description=The container's boot ID, for units with a procfs of their own
DefaultDependencies=no

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'cat /proc/sys/kernel/random/boot_id > /run/container-boot-id'
"""
BOOT_ID_DROPIN = """\
[Unit]
Wants=container-boot-id.service
After=container-boot-id.service

[Service]
BindReadOnlyPaths=/run/container-boot-id:/proc/sys/kernel/random/boot_id
"""


def boot_ids_per_container_boot(c: Container) -> None:
    c.write("/etc/systemd/system/container-boot-id.service", BOOT_ID_UNIT)
    for unit in ("mgsave.service", "mgsave-boot.service"):
        c.write(f"/etc/systemd/system/{unit}.d/container-boot-id.conf", BOOT_ID_DROPIN)


def recorded_boot_id(c: Container, record: str = "last-shutdown.json") -> str:
    import json

    return json.loads((c.dir("mgsave") / record).read_text())["boot_id"]


def test_mgsave_host_lifecycle(container):
    """make install on a host with a saved guest; a stop and a start by hand; a poweroff; a
    poweroff while the boot pass still waits; a boot pass killed by its timeout; a last boot."""
    c = container
    t = Timings()
    _copy_tree(c.root / SRC.lstrip("/"))
    c.write("/etc/mgsave/policy.yaml", POLICY)
    boot_ids_per_container_boot(c)

    # Boot 1: install on a host where a guest has a managed-save image. Installing arms the
    # shutdown pass and starts no guest.
    t.add("boot 1: container up (systemctl is-system-running)", c.boot())
    save_before_install(c)
    started = time.monotonic()
    install = c.run("make", "-C", SRC, "install")
    t.add("make install (enable both units, start mgsave.service)", time.monotonic() - started)
    assert "keeping the existing /etc/mgsave/policy.yaml" in install.stdout
    for unit in ("mgsave.service", "mgsave-boot.service"):
        assert c.run("systemctl", "is-enabled", unit).stdout.strip() == "enabled"
    assert unit_state(c, "mgsave.service")["ActiveState"] == "active"  # armed
    assert unit_state(c, "mgsave-boot.service")["ExecMainStartTimestampMonotonic"] == "0"  # never ran
    assert guest_states(c, [SAVED_BEFORE_INSTALL])[SAVED_BEFORE_INSTALL][0] == 5  # shut off
    assert (c.dir("lib") / "qemu/save" / f"{SAVED_BEFORE_INSTALL}.save").is_file()

    start_guests(c, t)

    # The stop timeout is only a backstop: a pass whose saves make progress extends it
    # (EXTEND_TIMEOUT_USEC), so even a 5 s TimeoutStopSec does not kill it. The host stays up, so
    # the unit's own stop would save nothing (tests/test_systemd_unit_stop.py): the drop-in makes
    # it run the pass whatever, as an admin could.
    dropin = "/etc/systemd/system/mgsave.service.d/short-timeout.conf"
    c.write(dropin, "[Service]\nTimeoutStopSec=5\nExecStop=\nExecStop=/usr/local/bin/mgsave shutdown\n")
    c.run("systemctl", "daemon-reload")
    started = time.monotonic()
    c.run("systemctl", "stop", "mgsave.service")
    stop_seconds = time.monotonic() - started
    t.add(f"systemctl stop mgsave with TimeoutStopSec=5 (saves {len(GUESTS)})", stop_seconds)
    assert unit_state(c, "mgsave.service")["Result"] == "success", \
        c.run("journalctl", "-u", "mgsave", "-n", "40", check=False).stdout
    extended = stop_seconds > 5
    c.run("rm", dropin)
    c.run("systemctl", "daemon-reload")
    started = time.monotonic()
    c.run("systemctl", "start", "mgsave-boot.service")  # pulls in mgsave.service: armed again
    assert unit_state(c, "mgsave.service")["ActiveState"] == "active"
    assert wait_boot_pass(c)["Result"] == "success"
    t.add(f"systemctl start mgsave-boot (resumes {len(GUESTS)})", time.monotonic() - started)
    assert guest_states(c, GUESTS) == {n: RUNNING_RESTORED for n in GUESTS}
    # It was not running at that shutdown: if-running leaves it off, its saved state kept.
    assert guest_states(c, [SAVED_BEFORE_INSTALL])[SAVED_BEFORE_INSTALL][0] == 5

    # The real thing: power the host off with the guests running.
    c.wait_ticking(GUESTS, after={n: c.ticks(n)[-1] for n in GUESTS})
    boots_before = {n: c.guest_boots(n) for n in GUESTS}
    off_started = time.time()
    t.add("boot 1: systemctl poweroff until the container exited", c.poweroff())
    off_ended = time.time()
    last_tick = {n: c.ticks(n)[-1] for n in GUESTS}
    for name in GUESTS:
        assert (c.dir("lib") / "qemu/save" / f"{name}.save").is_file(), f"{name} has no managed-save image"
    check_shutdown_journal(c, t, off_started, off_ended)

    # Boot 2: the boot pass resumes mg-1, mg-3, mg-4 and waits for mg-1 to be ready before it
    # starts mg-2; the host goes down while it waits. systemd stops the boot pass first: it
    # leaves mg-2 alone; the shutdown pass then saves the three it had resumed.
    c.write("/etc/mgsave/policy.yaml", WAITING_POLICY)
    resumed_first = [n for n in GUESTS if n != "mg-2"]
    t.add("boot 2: container up", c.boot())
    wait_states(c, {**{n: RUNNING_RESTORED for n in resumed_first}, "mg-2": 5})
    assert unit_state(c, "mgsave-boot.service")["ActiveState"] == "active"  # still waiting for mg-1
    assert_resumed(c, resumed_first, last_tick, boots_before)
    off_started = time.time()
    t.add("boot 2: systemctl poweroff during the boot pass", c.poweroff())
    off_ended = time.time()
    boot_pass = c.journal("_SYSTEMD_UNIT=mgsave-boot.service", since=off_started - 60, until=off_ended)
    assert any("not started: the pass was stopped (SIGTERM)" in str(e.get("MESSAGE")) for e in boot_pass), \
        [e.get("MESSAGE") for e in boot_pass]
    system = c.journal("_PID=1", since=off_started, until=off_ended)
    boot_stopped = first_realtime(system, r"^Stopped mgsave-boot\.service")
    shutdown_stopping = first_realtime(system, r"^Stopping mgsave\.service")
    assert boot_stopped and shutdown_stopping and boot_stopped <= shutdown_stopping
    t.add("  of which Stopping .. Stopped mgsave-boot (SIGTERM mid-pass)",
          boot_stopped - first_realtime(system, r"^Stopping mgsave-boot\.service"))
    for name in GUESTS:  # mg-2's image is the one from boot 1's poweroff, never used
        assert (c.dir("lib") / "qemu/save" / f"{name}.save").is_file(), f"{name} has no managed-save image"
    last_tick.update({n: c.ticks(n)[-1] for n in resumed_first})
    check_shutdown_journal(c, t, off_started, off_ended, names=resumed_first)

    # Boot 3: the same wait, but the boot pass is killed by its own time limit. Its unit fails;
    # mgsave.service stays active, so the next poweroff still saves every running guest.
    c.write("/etc/systemd/system/mgsave-boot.service.d/short-runtime.conf", "[Service]\nRuntimeMaxSec=20\n")
    t.add("boot 3: container up", c.boot())
    state = wait_boot_pass(c, timeout=120)
    assert state["ActiveState"] == "failed" and state["Result"] == "timeout", state
    assert unit_state(c, "mgsave.service")["ActiveState"] == "active"
    wait_states(c, {**{n: RUNNING_RESTORED for n in resumed_first}, "mg-2": 5})
    assert_resumed(c, resumed_first, last_tick, boots_before)
    off_started = time.time()
    t.add("boot 3: systemctl poweroff after the boot pass timed out", c.poweroff())
    off_ended = time.time()
    last_tick.update({n: c.ticks(n)[-1] for n in resumed_first})
    check_shutdown_journal(c, t, off_started, off_ended, names=resumed_first)

    # Boot 4: no more waiting. Every guest comes back with its memory, mg-2 too (from its image
    # of boot 1, carried in the records across the two stopped boot passes).
    (c.root / "etc/systemd/system/mgsave-boot.service.d/short-runtime.conf").unlink()
    c.write("/etc/mgsave/policy.yaml", POLICY)
    on_started = time.time()
    t.add("boot 4: container up", c.boot())
    assert wait_boot_pass(c)["Result"] == "success"
    t.add("boot 4: up .. boot pass ended", time.time() - on_started)
    assert guest_states(c, GUESTS) == {n: RUNNING_RESTORED for n in GUESTS}
    assert_resumed(c, GUESTS, last_tick, boots_before)
    boot = c.journal("_SYSTEMD_UNIT=mgsave-boot.service", since=on_started)
    window = pass_window(boot, "boot")
    assert window, "no boot pass in the journal"
    t.add("  of which the boot pass (PASS_START..PASS_END)", window[1] - window[0])
    for name in GUESTS:
        assert c.journal("-u", "mgsave-boot", f"MGSAVE_GUEST={name}", "MGSAVE_ACTION=resume", "MGSAVE_RESULT=ok",
                         since=on_started), f"no 'resume ok' journal entry for {name}"
    assert guest_states(c, [SAVED_BEFORE_INSTALL])[SAVED_BEFORE_INSTALL][0] == 5

    # make uninstall must not run the shutdown pass: the guests keep running.
    states = guest_states(c, GUESTS)
    c.run("make", "-C", SRC, "uninstall")
    assert unit_state(c, "mgsave.service")["ActiveState"] != "active"
    assert guest_states(c, GUESTS) == states
    assert c.run("cat", "/etc/mgsave/policy.yaml").stdout == POLICY
    t.add("boot 4: systemctl poweroff (mgsave uninstalled)", c.poweroff())

    print(f"\nmgsave under a real systemd, guests x 512 MiB with MiB filled {FILL_MIB}:\n{t}")
    print(f"  stop timeout extension {'exercised (the stop outlasted TimeoutStopSec=5)' if extended else 'not needed: the saves finished within 5 s'}")


def check_shutdown_journal(c: Container, t: Timings, since: float, until: float, names=GUESTS) -> None:
    """The poweroff's journal: the pass ran, saved each guest (its own entry), and ended before
    libvirtd was stopped."""
    shutdown = c.journal("_SYSTEMD_UNIT=mgsave.service", since=since, until=until)
    window = pass_window(shutdown, "shutdown")
    assert window, "no shutdown pass in the journal"
    t.add("  of which the shutdown pass (PASS_START..PASS_END)", window[1] - window[0])
    for name in names:
        saved = c.journal("-u", "mgsave", f"MGSAVE_GUEST={name}", "MGSAVE_ACTION=save", "MGSAVE_RESULT=ok",
                          since=since, until=until)
        assert saved, f"no 'save ok' journal entry for {name}"
        assert saved[-1]["SYSLOG_IDENTIFIER"] == "mgsave" and int(saved[-1]["MGSAVE_BYTES"]) > FILL_MIB[name] << 20
    system = c.journal("_PID=1", since=since, until=until)
    mgsave_stopping = first_realtime(system, r"^Stopping mgsave\.service")
    mgsave_stopped = first_realtime(system, r"^Stopped mgsave\.service")
    libvirtd_stopping = first_realtime(system, r"^Stopping libvirtd\.service")
    assert mgsave_stopped and libvirtd_stopping and mgsave_stopped <= libvirtd_stopping
    # libvirtd holds a logind delay lock while guests run; mgsave-early.service starts the pass
    # on PrepareForShutdown, so logind does not wait out InhibitDelayMaxSec first.
    early = [e.get("MESSAGE", "") for e in c.journal("_SYSTEMD_UNIT=mgsave-early.service", since=since, until=until)]
    assert any("shutdown pass started" in m for m in early), f"mgsave-early.service said: {early}"
    # Before logind lets systemd stop any unit (it would wait up to InhibitDelayMaxSec first).
    logind = c.journal("_COMM=systemd-logind", since=since, until=until)
    powering_down = first_realtime(logind, "System is powering down")
    assert powering_down and window[0] < powering_down, "the shutdown pass did not start early"
    t.add("  of which poweroff requested .. Stopping mgsave.service", mgsave_stopping - since)
    t.add("  of which Stopping .. Stopped mgsave.service", mgsave_stopped - mgsave_stopping)


def test_libvirt_guests_round_trip(container):
    """The same with Debian's libvirt-guests and no mgsave: printed for comparison, not asserted."""
    c = container
    t = Timings()
    c.write("/etc/default/libvirt-guests", LIBVIRT_GUESTS_DEFAULTS)
    t.add("boot 1: container up", c.boot())
    start_guests(c, t)
    boots_before = {n: c.guest_boots(n) for n in GUESTS}
    off_started = time.time()
    t.add("boot 1: systemctl poweroff until the container exited", c.poweroff())
    off_ended = time.time()
    last_tick = {n: c.ticks(n)[-1] for n in GUESTS}
    entries = c.journal("_SYSTEMD_UNIT=libvirt-guests.service", since=off_started, until=off_ended)
    system = c.journal("_PID=1", since=off_started, until=off_ended)
    stopping = first_realtime(system, r"^Stopping libvirt-guests\.service")
    stopped = first_realtime(system, r"^Stopped libvirt-guests\.service")
    if stopping and stopped:
        t.add("  of which poweroff requested .. Stopping libvirt-guests", stopping - off_started)
        t.add("  of which Stopping .. Stopped libvirt-guests", stopped - stopping)
    saved = [n for n in GUESTS if (c.dir("lib") / "qemu/save" / f"{n}.save").is_file()]
    on_started = time.time()
    t.add("boot 2: container up (libvirt-guests.sh start included)", c.boot())
    system = c.journal("_PID=1", since=on_started)
    starting = first_realtime(system, r"^Starting libvirt-guests\.service")
    finished = first_realtime(system, r"^Finished libvirt-guests\.service")
    if starting and finished:
        t.add("  of which Starting .. Finished libvirt-guests", finished - starting)
    boot_log = c.journal("_SYSTEMD_UNIT=libvirt-guests.service", since=on_started)
    try:
        resume = c.wait_ticking(GUESTS, after=last_tick, timeout=60)
        t.add("boot 2 finished until every guest ticks again", resume)
    except AssertionError:
        pass
    states = guest_states(c)
    restored = [n for n in GUESTS if states[n] == RUNNING_RESTORED and c.guest_boots(n) == boots_before[n]]
    t.add("boot 2: systemctl poweroff", c.poweroff())
    print(f"\nlibvirt-guests (ON_SHUTDOWN=suspend, ON_BOOT=start), {len(GUESTS)} guests:\n{t}")
    print(f"  saved at poweroff: {saved}; resumed with their memory at boot: {restored}")
    print(f"  states after boot 2: {states}")
    for title, log in (("its stop log", entries), ("its start log", boot_log)):
        if log:
            t0 = int(log[0]["__REALTIME_TIMESTAMP"])
            print(f"  {title}:\n" + "\n".join(
                f"    +{(int(e['__REALTIME_TIMESTAMP']) - t0) / 1e6:5.1f} s  {e.get('MESSAGE')}" for e in log))


# A boot pass killed outright (no boot record): mk-a is resumed and never becomes ready, mk-b
# and mk-c wait for it. Three small guests, three boots of one container.
KILLED_GUESTS = ("mk-a", "mk-b", "mk-c")
KILLED_WAITING_POLICY = POLICY + """\
guests:
  - match: {name: mk-a}
    ready: {agent: 10m}
  - match: {name: "mk-[bc]"}
    after: [mk-a]
"""


def test_guests_a_killed_boot_pass_never_reached_are_resumed_at_the_next_boot(container):
    """The boot pass is killed (SIGKILL: it writes no record) while mk-b and mk-c wait; the host
    goes down and boots again. Before: the shutdown pass of that boot kept only what it saved
    (the record it found was of the boot before), and the next boot left mk-b and mk-c off with
    their images unused. Now both are carried over, still saved, and resumed."""
    c = container
    _copy_tree(c.root / SRC.lstrip("/"))
    c.write("/etc/mgsave/policy.yaml", POLICY)
    boot_ids_per_container_boot(c)
    c.boot()
    c.run("make", "-C", SRC, "install")
    conn = c.connect()
    try:
        for name in KILLED_GUESTS:
            conn.defineXML(domain_xml(name, memory_mib=128)).create()
    finally:
        conn.close()
    c.wait_ticking(KILLED_GUESTS)
    boots_before = {n: c.guest_boots(n) for n in KILLED_GUESTS}
    c.poweroff()
    for name in KILLED_GUESTS:
        assert (c.dir("lib") / "qemu/save" / f"{name}.save").is_file(), f"{name} has no managed-save image"
    first_boot = recorded_boot_id(c)

    c.write("/etc/mgsave/policy.yaml", KILLED_WAITING_POLICY)
    c.boot()
    wait_states(c, {"mk-a": RUNNING_RESTORED, "mk-b": 5, "mk-c": 5})
    assert unit_state(c, "mgsave-boot.service")["ActiveState"] == "active"  # waiting for mk-a
    c.run("systemctl", "kill", "--signal=SIGKILL", "mgsave-boot.service")
    assert wait_boot_pass(c, timeout=60)["Result"] == "signal"
    off_started = time.time()
    c.poweroff()
    shutdown = [str(e.get("MESSAGE")) for e in c.journal("_SYSTEMD_UNIT=mgsave.service", since=off_started)]
    assert recorded_boot_id(c) != first_boot  # mgsave saw a reboot
    for name in ("mk-b", "mk-c"):
        assert any(m.startswith(f"{name}: carried over") and "still saved" in m for m in shutdown), "\n".join(shutdown)

    c.write("/etc/mgsave/policy.yaml", POLICY)
    c.boot()
    assert wait_boot_pass(c)["Result"] == "success"
    assert guest_states(c, KILLED_GUESTS) == {n: RUNNING_RESTORED for n in KILLED_GUESTS}
    assert {n: c.guest_boots(n) for n in KILLED_GUESTS} == boots_before  # none was cold-booted


def test_a_failed_image_is_kept_beside_libvirts_under_the_units(container):
    """Under mgsave-boot.service's sandbox the state directory and libvirt's save directory are
    two mounts (StateDirectory=, ReadWritePaths=): a link from one to the other gives EXDEV, and
    keeping an image that failed to resume used to copy it whole at boot. It is now a link
    beside the image: the same inode, nothing written under /var/lib/mgsave."""
    c = container
    _copy_tree(c.root / SRC.lstrip("/"))
    c.write("/etc/mgsave/policy.yaml", POLICY + "  on_resume_failure: leave-off\n")
    c.boot()
    save_before_install(c)  # a guest with a managed-save image
    image = c.dir("lib") / "qemu/save" / f"{SAVED_BEFORE_INSTALL}.save"
    with open(image, "r+b") as damaged:  # its header overwritten: the resume must fail
        damaged.write(b"\0" * 4096)
    c.run("make", "-C", SRC, "install")
    started = time.time()
    c.run("systemctl", "start", "mgsave-boot.service")
    state = wait_boot_pass(c)
    assert state["ExecMainStatus"] == "10"  # degraded: the guest is left off
    # ... which fails the unit on purpose, and its status line says which guest and why.
    assert (state["ActiveState"], state["Result"]) == ("failed", "exit-code")
    status = c.run("systemctl", "show", "-p", "StatusText", "--value", "mgsave-boot.service").stdout.strip()
    assert f"{SAVED_BEFORE_INSTALL} left-off" in status and "degraded: 'journalctl -t mgsave -b'" in status, status
    [kept] = list((c.dir("lib") / "qemu/save/mgsave-failed-images").iterdir())
    assert kept.name.startswith(SAVED_BEFORE_INSTALL + "-")
    assert os.stat(kept).st_ino == os.stat(image).st_ino, "kept by a link, not a copy"
    assert not (c.dir("mgsave") / "failed-images").exists() or not any((c.dir("mgsave") / "failed-images").iterdir())
    assert guest_states(c, [SAVED_BEFORE_INSTALL])[SAVED_BEFORE_INSTALL][0] == 5  # left off, as the policy says
    messages = [str(e.get("MESSAGE")) for e in c.journal("_SYSTEMD_UNIT=mgsave-boot.service", since=started)]
    assert any("kept the image" in m and "/mgsave-failed-images/" in m for m in messages), messages
    c.poweroff()
