"""Migration to a peer host on the two-host rig: real libvirtds in their own network namespaces,
real TCG guests whose heartbeat (in ``HostPair.serial_dir``) is followed across every move.

``mgsave`` runs "on host A" (in A's namespaces, where qemu:///system is A's daemon); the peer is
B, reached over the veth pair by plain TCP, which only the rig may use (docs/MIGRATION.md). One
HostPair serves the whole module; the test that kills B's daemon comes last.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import libvirt
import pytest

from tests.rig import domain_xml, unavailable_reason
from tests.rig.mgsave import FOREIGN_ENV
from tests.rig.peers import HostPair

pytestmark = pytest.mark.rig
_TICK = re.compile(rb"^tick (\d+)\r?$", re.M)
SMALL = dict(memory_mib=192, fill_mib=32)
UNANSWERED_PEER = "qemu+tcp://192.0.2.9/system"  # on the pair's network, but nobody is there
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # a guest looked for and not found is no news


@pytest.fixture(scope="module")
def pair():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with HostPair() as hosts:
        yield hosts


# --- helpers ------------------------------------------------------------------------------------


def serial(a, name: str) -> Path:
    return a.workdir.parent / "serial" / f"{name}.log"


def ticks(path: Path) -> list[int]:
    try:
        return [int(t) for t in _TICK.findall(path.read_bytes())]
    except FileNotFoundError:
        return []


def wait_tick(path: Path, after: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = ticks(path)
        if seen and seen[-1] > after:
            return seen[-1]
        time.sleep(0.2)
    raise AssertionError(f"no tick after {after} in {path} within {timeout} s")


class Heartbeat(threading.Thread):
    """Follows a guest's ticks while a command runs: the longest time without a new one."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.longest, self._done = path, 0.0, threading.Event()

    def run(self) -> None:
        last, since = None, time.monotonic()
        while not self._done.wait(0.2):
            seen = ticks(self.path)
            now = time.monotonic()
            if seen and seen[-1] != last:
                last, since = seen[-1], now
            self.longest = max(self.longest, now - since)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.longest


def assert_one_heartbeat(path: Path) -> None:
    seen = ticks(path)
    assert seen.count(1) == 1, f"{path.name}: the guest booted again"
    assert all(y == x + 1 for x, y in zip(seen, seen[1:])), f"{path.name}: the heartbeat restarted or skipped"


def start_guests(a, conn, *guests: str, **size) -> dict[str, int]:
    """Define and start guests on ``conn``, their serial logs where both hosts see them; once all
    are started (they boot at once), each one's tick."""
    for name in guests:
        conn.defineXML(domain_xml(name, serial=serial(a, name), **(size or SMALL))).create()
    return {name: wait_tick(serial(a, name), 1) for name in guests}


def start_guest(a, conn, name: str, **size) -> int:
    return start_guests(a, conn, name, **size)[name]


def names(conn, flags: int = 0) -> set[str]:
    return {d.name() for d in conn.listAllDomains(flags)}


def running_persistent(conn, name: str) -> bool:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return False
    return bool(dom.isActive() and dom.isPersistent())


def remove_everywhere(conns, *guests: str) -> None:
    for conn in conns:
        for name in guests:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            if dom.isActive():
                dom.destroy()
            if dom.hasManagedSaveImage(0):
                dom.managedSaveRemove(0)
            dom.undefine()


class OnHost:
    """The real ``mgsave`` command run on one host of the pair, with its own policy and state."""

    def __init__(self, host, workdir: Path):
        self.host = host
        self.dir = workdir
        self.dir.mkdir(mode=0o755, exist_ok=True)
        self.policy = self.dir / "policy.yaml"

    def write_policy(self, text: str) -> None:
        self.policy.write_text(textwrap.dedent(text))
        os.chmod(self.policy, 0o644)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "libmgsave", args[0], "--policy", str(self.policy),
                "--state-dir", str(self.dir / "state"), "--json", *args[1:]]

    def env(self) -> dict:
        return {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}

    def __call__(self, *args: str, timeout: float = 300) -> tuple[int, dict, str]:
        started = time.monotonic()
        out = self.host.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, env=self.env())
        print(f"mgsave {' '.join(args)}: exit {out.returncode}, {time.monotonic() - started:.1f} s")
        try:
            data = json.loads(out.stdout)
        except ValueError:
            raise AssertionError(f"no JSON from mgsave {args}: {out.stdout[-3000:]}\n{out.stderr[-5000:]}") from None
        return out.returncode, data, out.stderr

    def start(self, *args: str) -> subprocess.Popen:
        argv = ["nsenter", "-t", str(self.host.pid), "-m", "-n", f"--wd={Path(__file__).parents[1]}",
                *self.argv(*args)]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env())


def guest_result(data: dict, name: str) -> dict:
    [found] = [g for g in data["guests"] if g["name"] == name]
    return found


def policy(peers: list[str], *, chain: str = "[migrate, save, poweroff]", extra: str = "",
           come_back: bool = False, home: str = "") -> str:
    back = f", come_back: true, home: \"{home}\"" if come_back else ""
    peer_list = ", ".join(f'"{p}"' for p in peers)
    return f"""\
        version: 1
        defaults:
          on_shutdown: {chain}
          migrate: {{peers: [{peer_list}]{back}{extra}}}
        """


# --- the tests ----------------------------------------------------------------------------------


def overlap(a_step: dict, b_step: dict) -> bool:
    return a_step["started"] < b_step["finished"] and b_step["started"] < a_step["finished"]


def test_shutdown_migrates_every_guest_and_boot_brings_them_home(pair):
    """Both guests move to B with their heartbeat; with B cut off, boot leaves them there and
    says so; once B answers again, boot brings them home, heartbeat still going. Then the same
    on demand: evacuate (both at once) and return."""
    a, b = pair
    conn_a, conn_b = a.connect(), b.connect()
    guests = ["mig-1", "mig-2"]
    mgsave = OnHost(a, a.workdir.parent / "mgsave-home")
    try:
        start_guests(a, conn_a, *guests)
        mgsave.write_policy(policy([b.tcp_uri], come_back=True, home=a.tcp_uri))
        beats = [Heartbeat(serial(a, n)) for n in guests]
        for beat in beats:
            beat.start()
        rc, data, err = mgsave("shutdown")
        gaps = [beat.stop() for beat in beats]
        assert rc == 0, err[-5000:]
        for name in guests:
            result = guest_result(data, name)
            assert result["outcome"] == "migrated" and result["peer"] == b.tcp_uri, result
            assert running_persistent(conn_b, name), f"{name} is not running, persistent, on B"
        assert not names(conn_a) & set(guests), "a copy was left on A"
        assert max(gaps) < 5, f"the heartbeat stopped for {max(gaps):.1f} s"
        print(f"heartbeat gaps during the migration: {', '.join(f'{g:.1f} s' for g in gaps)}")

        rc, status, _ = mgsave("status")
        on_peer = {r["name"]: r.get("peer") for r in status["guests"]}
        assert on_peer == {n: b.tcp_uri for n in guests}, status["guests"]

        # B cut off from A: they stay there, running, and the pass says so
        subprocess.run(["ip", "-n", a.netns, "link", "set", "mgs-a", "down"], check=True)
        try:
            rc, data, err = mgsave("boot")
        finally:
            subprocess.run(["ip", "-n", a.netns, "link", "set", "mgs-a", "up"], check=True)
        assert rc == 10, err[-5000:]
        for name in guests:
            assert guest_result(data, name)["outcome"] == "on-peer"
            assert running_persistent(conn_b, name)
        # A shutdown pass meanwhile (nothing runs on A) keeps them in the records, on B
        rc, data, err = mgsave("shutdown")
        assert rc == 0, err[-5000:]
        rc, status, _ = mgsave("status")
        assert {r["name"]: r.get("peer") for r in status["guests"]} == {n: b.tcp_uri for n in guests}, status

        before = {n: ticks(serial(a, n))[-1] for n in guests}
        rc, data, err = mgsave("boot")
        assert rc == 0, err[-5000:]
        for name in guests:
            assert guest_result(data, name)["outcome"] == "returned"
            assert running_persistent(conn_a, name), f"{name} is not back on A"
            assert name not in names(conn_b), f"{name} was left on B"
            wait_tick(serial(a, name), before[name])
            assert_one_heartbeat(serial(a, name))

        # the same on demand, with the same guests: both migrations at once, then home again
        mgsave.write_policy(policy([b.tcp_uri], chain="[save, poweroff]", come_back=True, home=a.tcp_uri))
        rc, data, err = mgsave("evacuate")
        assert rc == 0, err[-5000:]
        steps = [next(s for s in guest_result(data, n)["steps"] if s["action"] == "migrate") for n in guests]
        assert overlap(*steps), f"the two migrations did not run at once: {steps}"
        assert all(running_persistent(conn_b, n) for n in guests) and not names(conn_a) & set(guests)
        rc, data, err = mgsave("return", "--dry-run")
        assert rc == 0 and {g["name"]: g["outcome"] for g in data["guests"]} == {n: "planned" for n in guests}
        rc, data, err = mgsave("return")
        assert rc == 0, err[-5000:]
        for name in guests:
            assert running_persistent(conn_a, name) and name not in names(conn_b)
            assert_one_heartbeat(serial(a, name))
        record = json.loads((mgsave.dir / "state" / "last-shutdown.json").read_text())
        assert {e["name"]: (e["outcome"], e.get("recorded_by")) for e in record["guests"].values()} == \
            {n: ("returned", "return") for n in guests}
        rc, status, _ = mgsave("status")
        assert not [r["name"] for r in status["guests"] if r.get("peer")], status["guests"]
    finally:
        remove_everywhere((conn_a, conn_b), *guests)
        conn_a.close()
        conn_b.close()


def test_an_unanswered_peer_or_a_migration_past_its_timeout_means_the_guest_is_saved(pair):
    """One pass, two guests: one's only peer does not answer (the plan drops its migration), the
    other's migration is too slow for its timeout (aborted: it runs on here, then is saved)."""
    a, b = pair
    conn_a, conn_b = a.connect(), b.connect()
    guests = ["mig-lonely", "mig-slow"]
    mgsave = OnHost(a, a.workdir.parent / "mgsave-fallback")
    try:
        start_guests(a, conn_a, *guests)
        mgsave.write_policy(policy([b.tcp_uri], extra=", bandwidth: 1, timeout: 3s") + f"""guests:
          - match: {{name: mig-lonely}}
            migrate: {{peers: ["{UNANSWERED_PEER}"]}}
        """)
        rc, data, err = mgsave("shutdown")
        assert rc == 10, err[-5000:]  # saved, but the first choice was the migration: degraded
        lonely, slow = (guest_result(data, n) for n in guests)
        assert lonely["outcome"] == "saved" and lonely["severity"] == "degraded", lonely
        assert any("no peer can take it" in m for m in lonely["messages"]), lonely["messages"]
        assert [s["action"] for s in lonely["steps"]] == ["save"]
        assert slow["outcome"] == "saved", slow
        [step] = [s for s in slow["steps"] if s["action"] == "migrate"]
        assert not step["ok"] and "aborted" in step["error"] and step["duration_seconds"] < 30, step
        for name in guests:
            dom = conn_a.lookupByName(name)
            assert not dom.isActive() and dom.hasManagedSaveImage(0), f"{name} is not saved here"
            assert name not in names(conn_b, libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    finally:
        remove_everywhere((conn_a, conn_b), *guests)
        conn_a.close()
        conn_b.close()


@contextlib.contextmanager
def packets_dropped(to, sender):
    """``to`` swallows every packet from ``sender`` (a firewall that drops, a host gone from the
    network): a connection from ``sender`` neither succeeds nor fails, it waits."""
    rule = ["INPUT", "-s", sender.address, "-j", "DROP"]
    subprocess.run(["ip", "netns", "exec", to.netns, "iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "netns", "exec", to.netns, "iptables", "-D", *rule], check=True)


# A peer that swallows packets is given up after this (hypervisor.PEER_TIMEOUT), per call; the
# kernel's own TCP connect timeout, which bounded it before, is about 130 s.
PEER_BOUND = 15


def test_a_guest_defined_here_again_is_not_started_while_it_runs_on_its_peer(pair):
    """Migrated to B, then defined again on A and shut off (the daemon died in the migration's
    last step; configuration management defined it again): A's boot pass leaves it off while it
    runs on B, and also when B swallows A's packets (given up within the peer bound, degraded).
    The same bound for return and check, with the guest living on B."""
    a, b = pair
    conn_a, conn_b = a.connect(), b.connect()
    mgsave = OnHost(a, a.workdir.parent / "mgsave-split")
    try:
        start_guest(a, conn_a, "split-1")
        mgsave.write_policy(policy([b.tcp_uri]))
        rc, data, err = mgsave("shutdown")
        assert rc == 0 and guest_result(data, "split-1")["outcome"] == "migrated", err[-5000:]
        there = conn_b.lookupByName("split-1")
        conn_a.defineXML(there.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))  # same UUID: the record's guest
        beat = Heartbeat(serial(a, "split-1"))
        beat.start()
        rc, data, err = mgsave("boot")
        assert rc == 0, err[-5000:]
        result = guest_result(data, "split-1")
        assert result["outcome"] == "skipped" and "lives on" in result["messages"][0], result
        assert not conn_a.lookupByName("split-1").isActive(), "started a second copy on A"
        with packets_dropped(b, a):
            rc, data, err = mgsave("boot")
            result = guest_result(data, "split-1")
            assert rc == 10 and result["outcome"] == "left-off", (result, err[-5000:])
            assert f"no answer within {PEER_BOUND} s" in result["messages"][0], result
            assert data["duration_seconds"] < PEER_BOUND + 30, data["duration_seconds"]
            assert not conn_a.lookupByName("split-1").isActive(), "started a second copy on A"

            conn_a.lookupByName("split-1").undefine()  # it lives on B alone: due home
            mgsave.write_policy(policy([b.tcp_uri], come_back=True, home=a.tcp_uri))
            rc, data, err = mgsave("return")
            result = guest_result(data, "split-1")
            assert rc == 10 and result["outcome"] == "on-peer", (result, err[-5000:])
            assert any(f"no answer within {PEER_BOUND} s" in m for m in result["messages"]), result
            assert data["duration_seconds"] < PEER_BOUND + 30, data["duration_seconds"]
            started = time.monotonic()
            rc, data, err = mgsave("check")
            assert time.monotonic() - started < PEER_BOUND + 30
            assert any(f"no answer within {PEER_BOUND} s" in w["message"] for w in data["warnings"]), data
        assert beat.stop() < 5, "the guest on B stopped ticking"
        assert running_persistent(conn_b, "split-1")
        assert_one_heartbeat(serial(a, "split-1"))
    finally:
        remove_everywhere((conn_a, conn_b), "split-1")
        conn_a.close()
        conn_b.close()


LIVE_P2P = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)


def test_a_guest_migrated_here_during_the_shutdown_pass_is_saved_once_it_has_arrived(pair):
    """Hosts that are each other's peers, going down together: A sends a guest to B (slowly)
    while B's shutdown pass begins. B sees it still arriving (paused, transient): ``check``
    warns about the pair; the pass waits for it and saves it once it runs on B, rather than
    failing to save it half-arrived and leaving it to be killed with the host."""
    a, b = pair
    conn_a, conn_b = a.connect(), b.connect()
    on_b = OnHost(b, b.workdir.parent / "mgsave-arrivals")
    try:
        tick = start_guest(a, conn_a, "arrive-1")
        dom = conn_a.lookupByName("arrive-1")
        moved: list = []
        mover = threading.Thread(target=lambda: moved.append(dom.migrateToURI3(
            b.tcp_uri, {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 2}, LIVE_P2P)), daemon=True)
        mover.start()
        deadline = time.monotonic() + 60
        while "arrive-1" not in names(conn_b, libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            assert mover.is_alive() and time.monotonic() < deadline, "the migration did not begin"
            time.sleep(0.1)
        on_b.write_policy(policy([a.tcp_uri]))  # B names A as its peer too
        rc, data, err = on_b("check")
        assert any("came here by migration (arrive-1)" in w["message"] for w in data["warnings"]), data
        on_b.write_policy(policy([a.tcp_uri], chain="[save, poweroff]"))
        assert mover.is_alive(), "the migration ended before B's pass began: too fast for this test"
        rc, data, err = on_b("shutdown")
        mover.join(60)
        assert moved == [0], "the migration to B failed"
        assert rc == 0, err[-5000:]
        assert "arrive-1: being migrated (or started) here during the pass" in err, err[-5000:]
        assert guest_result(data, "arrive-1")["outcome"] == "saved", guest_result(data, "arrive-1")
        there = conn_b.lookupByName("arrive-1")
        assert not there.isActive() and there.hasManagedSaveImage(0) and there.isPersistent()
        assert "arrive-1" not in names(conn_a)
        there.create()  # its memory comes back from the save B made
        wait_tick(serial(a, "arrive-1"), tick)
        assert_one_heartbeat(serial(a, "arrive-1"))
    finally:
        remove_everywhere((conn_a, conn_b), "arrive-1")
        conn_a.close()
        conn_b.close()


def wait_for_migration(dom, proc, sent: int = 4 * 2**20, timeout: float = 60) -> None:
    """Until the guest's migration job has sent ``sent`` bytes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = dom.jobInfo()
        if info[0] != libvirt.VIR_DOMAIN_JOB_NONE and info[4] > sent:
            return
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the migration did not begin")


def test_a_migration_cut_short_leaves_the_guest_here(pair):
    """Last in the module (B's daemon does not come back). One guest, two migrations cut short:
    a stop request aborts the first (the guest runs on here, left as it was); B's daemon
    killed mid-way fails the second (it runs on here, and is saved)."""
    a, b = pair
    conn_a = a.connect()
    mgsave = OnHost(a, a.workdir.parent / "mgsave-cut")
    try:
        tick = start_guest(a, conn_a, "mig-cut")
        dom = conn_a.lookupByName("mig-cut")
        mgsave.write_policy(policy([b.tcp_uri], extra=", bandwidth: 4, timeout: 5m"))
        proc = mgsave.start("shutdown")
        wait_for_migration(dom, proc)
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        assert time.monotonic() - stopped_at < 30, "the stop request waited for the migration"
        assert proc.returncode == 128 + signal.SIGTERM, err[-5000:]
        assert guest_result(json.loads(out), "mig-cut")["outcome"] == "interrupted"
        assert dom.isActive() and not dom.hasManagedSaveImage(0), "not left running here"
        tick = wait_tick(serial(a, "mig-cut"), tick + 1)
        assert_one_heartbeat(serial(a, "mig-cut"))

        proc = mgsave.start("shutdown")
        wait_for_migration(dom, proc, sent=28 * 2**20)  # at 4 MiB/s: past the first progress line
        os.kill(b.libvirtd_pid(), signal.SIGKILL)  # its guests' QEMUs live on, as on a real host
        out, err = proc.communicate(timeout=300)
        result = guest_result(json.loads(out), "mig-cut")
        assert proc.returncode == 10, err[-5000:]
        assert re.search(rf"mig-cut: migrating to {re.escape(b.tcp_uri)}: \d+% of", err), err[-5000:]
        assert result["outcome"] == "saved", result
        [step] = [s for s in result["steps"] if s["action"] == "migrate"]
        assert not step["ok"], step
        assert not dom.isActive() and dom.hasManagedSaveImage(0)
        dom.create()  # its memory came back from the save made here, not from B
        wait_tick(serial(a, "mig-cut"), tick)
        assert_one_heartbeat(serial(a, "mig-cut"))
    finally:
        remove_everywhere((conn_a,), "mig-cut")
        conn_a.close()
