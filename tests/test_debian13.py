"""mgsave's Debian package on a Debian 13 host (libvirt 11, Python 3.13), through a real poweroff.

The host is a Debian 13 root (``tests.rig.debian_root``: debootstrap, Debian's own packages, cached
per machine) booted by ``systemd-nspawn -b`` (``tests.rig.container``). The package is built on this
(Debian 12) machine by ``make deb`` in a copy of the tree, so installing it there also proves it
survives a Python minor-version change. Set ``MGSAVE_DEB=<file.deb>`` to test an already built
package instead.

One container, two boots:

  boot 1   a guest is managed-saved by hand, three more run; ``dpkg -i`` the package: the shutdown
           pass is armed, the boot pass is not run and starts no guest; ``mgsave check``,
           ``systemd-analyze verify`` and ``security``; then ``systemctl poweroff`` saves the three
  boot 2   the three come back ``running (restored)`` with their heartbeat going on; the guest saved
           before the install stays off with its image kept: under the default ``if-running`` it
           was not running at the last shutdown (the shutdown record says so)

Debian 13 ships only the monolithic libvirtd. If a root ever has virtqemud units, the round trip
runs once more with libvirtd disabled and virtqemud's sockets enabled (boots 3 and 4).
Run with ``-s`` to see the versions, the timings and systemd's verdicts.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.rig.container import Container, prepared_host, unavailable
from tests.rig.deb import DebBuildError, build_deb
from tests.rig.debian_root import RootBuildError, ensure_root, format_versions, versions
from tests.rig.guests import domain_xml

pytestmark = [pytest.mark.systemd, pytest.mark.rig, pytest.mark.debian13]

MEMORY_MIB = 256
RUNNING = {"d13-1": 64, "d13-2": 64, "d13-3": 0}  # name: MiB of random memory
SAVED_BEFORE = "d13-saved"  # managed-saved by hand before mgsave is installed
PACKAGE_IN_HOST = "/var/cache/mgsave-test/mgsave.deb"
UNITS = ("mgsave.service", "mgsave-boot.service", "mgsave-early.service")
UNIT_DIR = "/usr/lib/systemd/system"
SHUTOFF_SAVED = (5, 5)  # VIR_DOMAIN_SHUTOFF, VIR_DOMAIN_SHUTOFF_SAVED
SHUTOFF = 5  # after a restart of the daemon the reason of a saved guest is "unknown"
RUNNING_RESTORED = (1, 3)  # VIR_DOMAIN_RUNNING, VIR_DOMAIN_RUNNING_RESTORED
MONOLITHIC = ("libvirtd.service", "libvirtd.socket", "libvirtd-ro.socket", "libvirtd-admin.socket")
# virtproxyd keeps /run/libvirt/libvirt-sock, through which the test reaches the daemon from outside.
MODULAR = ("virtqemud.socket", "virtqemud-ro.socket", "virtqemud-admin.socket", "virtproxyd.socket")


def _unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("systemd-nspawn", "nsenter", "journalctl", "debootstrap", "unshare", "make"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not importable"
    return None


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The .deb under test: ``make deb`` in a copy of this tree (or ``$MGSAVE_DEB``)."""
    given = os.environ.get("MGSAVE_DEB")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"MGSAVE_DEB={given}: no such file", pytrace=False)
        return Path(given)
    started = time.monotonic()
    try:
        deb = build_deb(tmp_path_factory.mktemp("deb"))
    except DebBuildError as error:
        unavailable(str(error))
    print(f"\nmake deb: {deb.name} in {time.monotonic() - started:.0f} s")
    return deb


def uncaptured(config):
    """A print that reaches the terminal at once, past pytest's capture: a first root build
    takes minutes, and whoever waits should see why."""
    capture = config.pluginmanager.getplugin("capturemanager")

    def show(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print(line, flush=True)
    return show


@pytest.fixture(scope="module")
def host(pytestconfig):
    """A Debian 13 host (not yet booted) over the cached root, with the test guests' image bound in."""
    reason = _unavailable_reason()
    if reason:
        unavailable(reason)
    try:
        lower = ensure_root(log=uncaptured(pytestconfig))
    except RootBuildError as error:
        unavailable(f"cannot build the Debian 13 root: {error}")
    with prepared_host("mgsave-debian13-", lower=lower) as c:
        yield c


class Timings(list):
    def add(self, what: str, seconds: float) -> None:
        self.append(f"  {what:<56} {seconds:6.1f} s")


def libvirt_layout(root: Path) -> dict[str, bool]:
    """Which libvirt daemons the root's packages ship units for."""
    units = root / UNIT_DIR.lstrip("/")
    return {"libvirtd": (units / "libvirtd.service").exists(), "virtqemud": any(units.glob("virtqemud*"))}


def states(c: Container, names) -> dict[str, tuple[int, int]]:
    conn = c.connect()
    try:
        return {name: tuple(conn.lookupByName(name).state()) for name in names}
    finally:
        conn.close()


def unit_property(c: Container, unit: str, name: str) -> str:
    return c.run("systemctl", "show", "-p", name, "--value", unit).stdout.strip()


def pass_times(c: Container, kind: str, since: float, until: float | None = None) -> dict[str, float]:
    """When the last pass of ``kind`` started and ended (PASS_START, PASS_END), those there are."""
    from libmgsave import journal

    ids = {journal.PASS_START: "start", journal.PASS_END: "end"}
    times = {}
    for entry in c.journal("SYSLOG_IDENTIFIER=mgsave", since=since, until=until):
        if entry.get("MESSAGE_ID") in ids and entry.get("MGSAVE_PASS") == kind:
            times[ids[entry["MESSAGE_ID"]]] = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
    return times


def pass_seconds(c: Container, kind: str, since: float, until: float | None = None) -> float | None:
    """How long the last pass of ``kind`` took (PASS_START..PASS_END), None if none finished."""
    times = pass_times(c, kind, since, until)
    return times["end"] - times["start"] if {"start", "end"} <= times.keys() else None


def pass_ran(c: Container, kind: str, since: float, until: float | None = None) -> bool:
    return pass_seconds(c, kind, since, until) is not None


def guest_results(c: Container, action: str, since: float, until: float | None = None) -> dict[str, str]:
    """Each guest's last ``action`` step result in the journal (its step lines carry
    MGSAVE_RESULT; the line that sums up its outcome carries MGSAVE_OUTCOME instead)."""
    entries = c.journal("SYSLOG_IDENTIFIER=mgsave", f"MGSAVE_ACTION={action}", since=since, until=until)
    return {e["MGSAVE_GUEST"]: e["MGSAVE_RESULT"] for e in entries if "MGSAVE_GUEST" in e and "MGSAVE_RESULT" in e}


def put_guests_in_place(c: Container, t: Timings) -> None:
    """The guest saved before the install, and the ones that run."""
    conn = c.connect()
    try:
        conn.defineXML(domain_xml(SAVED_BEFORE, memory_mib=MEMORY_MIB, fill_mib=32))
        for name, fill in RUNNING.items():
            conn.defineXML(domain_xml(name, memory_mib=MEMORY_MIB, fill_mib=fill))
        started = time.monotonic()
        for name in (SAVED_BEFORE, *RUNNING):
            conn.lookupByName(name).create()
        c.wait_ticking([SAVED_BEFORE, *RUNNING])
        t.add(f"{len(RUNNING) + 1} guests boot", time.monotonic() - started)
        saved = conn.lookupByName(SAVED_BEFORE)
        saved.managedSave(0)
        assert saved.hasManagedSaveImage(0)
    finally:
        conn.close()


def install_package(c: Container, package: Path, t: Timings) -> None:
    """dpkg -i inside; the shutdown pass armed, the boot pass not run, no guest started."""
    target = c.root / PACKAGE_IN_HOST.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(package, target)
    boots = {n: c.guest_boots(n) for n in RUNNING}
    since = time.time()
    started = time.monotonic()
    c.run("dpkg", "-i", PACKAGE_IN_HOST)
    t.add(f"dpkg -i {package.name}", time.monotonic() - started)
    for unit in UNITS:
        assert c.run("systemctl", "is-enabled", unit, check=False).stdout.strip() == "enabled", unit
    assert c.run("systemctl", "is-active", "mgsave.service", check=False).stdout.strip() == "active"
    assert c.run("systemctl", "is-active", "mgsave-early.service", check=False).stdout.strip() == "active"
    assert unit_property(c, "mgsave-boot.service", "ActiveState") == "inactive"
    assert unit_property(c, "mgsave-boot.service", "ExecMainStartTimestampMonotonic") == "0", \
        "the install ran the boot pass"
    assert not pass_ran(c, "boot", since) and not pass_ran(c, "shutdown", since)
    now = states(c, [SAVED_BEFORE, *RUNNING])
    assert now[SAVED_BEFORE] == SHUTOFF_SAVED, f"the install started {SAVED_BEFORE}: {now[SAVED_BEFORE]}"
    assert all(now[n][0] == 1 for n in RUNNING) and {n: c.guest_boots(n) for n in RUNNING} == boots, now


def check_installed(c: Container) -> None:
    """The package's program on Debian 13's python3, and its units as systemd sees them."""
    shebang = c.run("head", "-n1", "/usr/bin/mgsave").stdout.strip()
    python = c.run("python3", "--version").stdout.strip()
    version = c.run("mgsave", "--version").stdout.strip()
    print(f"  {version}: /usr/bin/mgsave starts with {shebang!r}; the host's {python}")
    check = c.run("mgsave", "--json", "check", check=False)
    assert check.returncode == 0, f"mgsave check exited {check.returncode}:\n{check.stdout}\n{check.stderr}"
    report = json.loads(check.stdout)
    assert report["ok"] is True, report
    print(f"  mgsave check: the policy is valid; libvirt daemons: {report.get('daemon_layout')}; warnings:"
          + "".join(f"\n    {w['message']}" for w in report["warnings"]))
    assert report.get("daemon_layout") == "monolithic", "Debian 13 enables libvirtd.socket"
    action, reason = boot_plan_for(c, SAVED_BEFORE)
    print(f"  mgsave plan boot, no shutdown record yet: {SAVED_BEFORE} {action}: {reason}")
    assert action == ["resume"], "with no shutdown record, a guest with a managed-save image counts as running"

    paths = [f"{UNIT_DIR}/{unit}" for unit in UNITS]
    verify = c.run("systemd-analyze", "verify", *paths, check=False)  # man: links included
    assert verify.returncode == 0 and "mgsave" not in verify.stdout + verify.stderr, \
        f"systemd-analyze verify exited {verify.returncode}:\n{verify.stdout}{verify.stderr}"
    print(f"  systemd-analyze verify {' '.join(UNITS)}: clean")
    security = c.run("systemd-analyze", "security", "--no-pager", "mgsave.service", check=False)
    overall = [ln.strip() for ln in security.stdout.splitlines() if "Overall exposure level" in ln]
    assert overall, f"systemd-analyze security said:\n{security.stdout}{security.stderr}"
    print(f"  systemd-analyze security mgsave.service: {overall[0]}")


def boot_plan_for(c: Container, name: str) -> tuple[list[str], str]:
    """What ``mgsave plan boot`` would do with the guest, and why."""
    plan = json.loads(c.run("mgsave", "--json", "plan", "boot").stdout)
    entry = next(g for g in plan["plans"][0]["guests"] if g["name"] == name)
    return entry["actions"], entry["reason"]


def first_realtime(entries: list[dict], prefix: str) -> float | None:
    times = [int(e["__REALTIME_TIMESTAMP"]) / 1e6 for e in entries if str(e.get("MESSAGE", "")).startswith(prefix)]
    return min(times, default=None)


def round_trip(c: Container, t: Timings, boot: int, daemon: str = "libvirtd") -> None:
    """Poweroff of boot ``boot`` with the RUNNING guests up (``daemon`` serving them), then the
    next boot: each guest comes back with its memory."""
    c.wait_ticking(RUNNING, after={n: c.ticks(n)[-1] for n in RUNNING})
    boots = {n: c.guest_boots(n) for n in RUNNING}
    off_started = time.time()
    t.add(f"boot {boot}: systemctl poweroff until the container exited", c.poweroff())
    off_ended = time.time()
    last_tick = {n: c.ticks(n)[-1] for n in RUNNING}
    for name in (SAVED_BEFORE, *RUNNING):
        assert (c.dir("lib") / "qemu/save" / f"{name}.save").is_file(), f"{name} has no managed-save image"
    shutdown_pass = pass_seconds(c, "shutdown", off_started, off_ended)
    assert shutdown_pass is not None, "no shutdown pass in the journal of the poweroff"
    t.add("  of which the shutdown pass (PASS_START..PASS_END)", shutdown_pass)
    saved = guest_results(c, "save", off_started, off_ended)
    assert saved == {n: "ok" for n in RUNNING}, f"the shutdown pass's saves: {saved}"
    # libvirt 11 holds a logind delay lock while guests run: mgsave-early.service starts the
    # pass on PrepareForShutdown, so logind never waits out InhibitDelayMaxSec for it.
    early = [e.get("MESSAGE", "") for e in c.journal("_SYSTEMD_UNIT=mgsave-early.service",
                                                      since=off_started, until=off_ended)]
    assert any("shutdown pass started" in m for m in early), f"mgsave-early.service said: {early}"
    # Before logind lets systemd stop any unit (it would wait up to InhibitDelayMaxSec first).
    logind = c.journal("_COMM=systemd-logind", since=off_started, until=off_ended)
    powering_down = first_realtime(logind, "System is powering down")
    assert powering_down and pass_times(c, "shutdown", off_started, off_ended)["start"] < powering_down, "the shutdown pass did not start early"
    system = c.journal("_PID=1", since=off_started, until=off_ended)
    mgsave_stopped = first_realtime(system, "Stopped mgsave.service")
    daemon_stopping = first_realtime(system, f"Stopping {daemon}.service")
    assert mgsave_stopped and daemon_stopping and mgsave_stopped <= daemon_stopping, \
        f"mgsave.service stopped at {mgsave_stopped}, {daemon}.service began to stop at {daemon_stopping}"
    # Debian enables libvirt-guests (ON_SHUTDOWN=shutdown): ordered after mgsave, it finds nothing left.
    peer = c.journal("_SYSTEMD_UNIT=libvirt-guests.service", since=off_started, until=off_ended)
    print(f"  boot {boot} poweroff, libvirt-guests said: {[e.get('MESSAGE') for e in peer]}")

    on_started = time.time()
    t.add(f"boot {boot + 1}: container up", c.boot())
    deadline = time.monotonic() + 120
    while not pass_ran(c, "boot", on_started):  # the boot pass does not hold up the boot
        assert time.monotonic() < deadline, "no boot pass finished within 120 s of the boot"
        time.sleep(0.5)
    t.add(f"boot {boot + 1}: boot started .. boot pass finished", time.time() - on_started)
    t.add("  of which the boot pass (PASS_START..PASS_END)", pass_seconds(c, "boot", on_started))
    now = states(c, [SAVED_BEFORE, *RUNNING])
    assert now[SAVED_BEFORE][0] == SHUTOFF and {n: now[n] for n in RUNNING} == dict.fromkeys(RUNNING, RUNNING_RESTORED), now
    assert unit_property(c, "mgsave-boot.service", "Result") == "success"
    assert c.run("systemctl", "is-active", "mgsave.service", check=False).stdout.strip() == "active"
    resumed = guest_results(c, "resume", on_started)
    assert resumed == {n: "ok" for n in RUNNING}, f"the boot pass's resumes: {resumed}"
    c.wait_ticking(RUNNING, after=last_tick)
    for name in RUNNING:
        ticks = c.ticks(name)
        after = ticks[ticks.index(last_tick[name]) + 1]
        assert after == last_tick[name] + 1, f"{name}: tick {last_tick[name]}, then {after}"
        assert c.guest_boots(name) == boots[name], f"{name} was cold-booted"
    # The guest saved by hand before the install: not running at the last shutdown, so left off.
    assert (c.dir("lib") / "qemu/save" / f"{SAVED_BEFORE}.save").is_file()
    action, reason = boot_plan_for(c, SAVED_BEFORE)
    print(f"  boot {boot + 1}: {SAVED_BEFORE} left off with its image: {reason}")
    assert action == ["skip"] and "not running at the last shutdown" in reason, (action, reason)


def switch_to_modular(c: Container) -> None:
    """libvirtd disabled, virtqemud socket-activated: effective from the next boot."""
    c.run("systemctl", "disable", *MONOLITHIC)
    c.run("systemctl", "enable", *MODULAR)


def test_package_round_trip_on_debian13(package, host):
    c = host
    t = Timings()
    layout = libvirt_layout(c.lower)
    print(f"\nDebian 13 host: {format_versions(versions(c.lower))}")
    listing = sorted(p.name for p in (c.lower / UNIT_DIR.lstrip("/")).glob("virtqemud*"))
    print(f"  ls {UNIT_DIR}/virtqemud*: {' '.join(listing) or 'no such file'}; libvirtd.service "
          f"{'present' if layout['libvirtd'] else 'absent'}")
    assert layout["libvirtd"], "the Debian 13 root has no libvirtd.service"

    t.add("boot 1: container up (systemctl is-system-running)", c.boot())
    print("  enabled at boot 1: " + ", ".join(
        f"{u} {c.run('systemctl', 'is-enabled', u, check=False).stdout.strip()}"
        for u in ("libvirtd.service", "libvirtd.socket", "libvirt-guests.service")))
    put_guests_in_place(c, t)
    install_package(c, package, t)
    check_installed(c)
    round_trip(c, t, 1)
    if layout["virtqemud"]:
        switch_to_modular(c)
        round_trip(c, t, 2)
        assert c.run("systemctl", "is-active", "virtqemud.service", check=False).stdout.strip() == "active"
        round_trip(c, t, 3, daemon="virtqemud")
    print("\n".join(t))
