"""Test guests in the rig's libvirtd: domain XML, define/start, and reading their heartbeat.

Every function here works in any process inside the rig's mount namespace (a pytest session with
the ``rig`` fixture, or a command run by ``python -m tests.rig run``): guests are addressed by name,
and a guest's serial console goes to ``/var/log/libvirt/rig-serial/<name>.log`` (a rig-private
path). A guest writes ``tick <n>`` there once a second; see ``tests.rig.image``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from xml.sax.saxutils import escape

from .daemon import SERIAL_DIR
from .image import ensure_image

DEFAULT_MEMORY_MIB = 512
_TICK = re.compile(rb"^tick (\d+)\r?$", re.M)
_BOOT = re.compile(rb"^rig: init up ", re.M)


def serial_log(name: str) -> Path:
    return Path(SERIAL_DIR) / f"{name}.log"


def domain_xml(name: str, *, memory_mib: int = DEFAULT_MEMORY_MIB, fill_mib: int = 0,
               ignore_acpi: bool = False, vcpus: int = 1, agent: bool = False,
               serial: Path | None = None, fill_kind: str = "random") -> str:
    """A TCG guest with no disks: the rig kernel + initramfs, serial console to a file (``serial``,
    by default the rig's ``serial_log(name)``); with ``agent``, QEMU's guest agent on a
    virtio-serial channel. ``fill_kind``: ``random`` (incompressible) or ``text`` (compressible)."""
    if fill_mib + 64 > memory_mib:
        raise ValueError(f"fill_mib={fill_mib} needs memory_mib >= {fill_mib + 64}")
    img = ensure_image()
    if fill_kind not in ("random", "text"):
        raise ValueError(f"fill_kind={fill_kind!r}: random or text")
    cmdline = (f"console=ttyS0 quiet mitigations=off fill={fill_mib} ignore_acpi={int(ignore_acpi)} "
               f"agent={int(agent)}" + ("" if fill_kind == "random" else f" fill_kind={fill_kind}"))
    channel = ("\n    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
               if agent else "")
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(img.kernel))}</kernel>
    <initrd>{escape(str(img.initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path='{escape(str(serial or serial_log(name)))}' append='on'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>{channel}
    <memballoon model='none'/>
  </devices>
</domain>
"""


def define_guests(conn, n: int, *, memory_mib: int = DEFAULT_MEMORY_MIB, fill_mib: int = 0,
                  prefix: str = "rig", ignore_acpi: bool = False, transient: bool = False,
                  start: bool = False, agent: bool = False, fill_kind: str = "random") -> list[str]:
    """Define ``n`` guests named ``<prefix>-1`` .. ``<prefix>-<n>``; returns their names.

    Persistent (defined, not started) unless ``start``. ``transient=True`` creates them with
    createXML, which also starts them (transient guests exist only while running)."""
    names = [f"{prefix}-{i}" for i in range(1, n + 1)]
    for name in names:
        serial_log(name).parent.mkdir(parents=True, exist_ok=True)
        xml = domain_xml(name, memory_mib=memory_mib, fill_mib=fill_mib, ignore_acpi=ignore_acpi, agent=agent,
                         fill_kind=fill_kind)
        if transient:
            conn.createXML(xml, 0)
        else:
            dom = conn.defineXML(xml)
            if start:
                dom.create()
    return names


def ticks(name: str) -> list[int]:
    """Every tick number in the guest's serial log, in order."""
    try:
        data = serial_log(name).read_bytes()
    except FileNotFoundError:
        return []
    return [int(m) for m in _TICK.findall(data)]


def last_tick(name: str) -> int:
    """The last tick the guest wrote (0 if none yet)."""
    t = ticks(name)
    return t[-1] if t else 0


def boots(name: str) -> int:
    """How many times the guest's /init started (a restore from a save image does not count)."""
    try:
        return len(_BOOT.findall(serial_log(name).read_bytes()))
    except FileNotFoundError:
        return 0


def serial_text(name: str) -> str:
    try:
        return serial_log(name).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_tick_after(name: str, tick: int, timeout: float = 60.0) -> int:
    """Wait until the guest writes a tick greater than ``tick``; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        t = last_tick(name)
        if t > tick:
            return t
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: no tick after {tick} within {timeout:.0f} s "
                               f"(last {t}); serial log tail:\n{serial_text(name)[-1500:]}")
        time.sleep(0.2)


def start_and_wait_ticking(conn, names: list[str], timeout: float = 300.0) -> dict[str, float]:
    """Start every named guest that is not running (all at once), then wait until each one ticks.

    Returns seconds from start until the first tick, per guest (its boot time, including the fill).
    """
    t0 = time.monotonic()
    before = {}
    for name in names:
        dom = conn.lookupByName(name)
        before[name] = last_tick(name)
        if not dom.isActive():
            dom.create()
    started = {name: t0 for name in names}
    done: dict[str, float] = {}
    deadline = t0 + timeout
    while len(done) < len(names):
        for name in names:
            if name not in done and last_tick(name) > before[name]:
                done[name] = time.monotonic() - started[name]
        if len(done) < len(names):
            if time.monotonic() > deadline:
                late = [n for n in names if n not in done]
                raise TimeoutError(f"guests {late} not ticking after {timeout:.0f} s; "
                                   f"{late[0]} serial log tail:\n{serial_text(late[0])[-1500:]}")
            time.sleep(0.2)
    return done


_STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown",
           5: "shutoff", 6: "crashed", 7: "pmsuspended"}
_REASONS = {
    1: {0: "unknown", 1: "booted", 2: "migrated", 3: "restored", 4: "from snapshot", 5: "unpaused",
        6: "migration canceled", 7: "save canceled", 8: "wakeup", 9: "crashed", 10: "post-copy",
        11: "post-copy failed"},
    3: {0: "unknown", 1: "user", 2: "migration", 3: "save", 4: "dump", 5: "ioerror", 6: "watchdog",
        7: "from snapshot", 8: "shutting down", 9: "snapshot", 10: "crashed", 11: "starting up",
        12: "post-copy", 13: "post-copy failed", 14: "api error"},
    4: {0: "unknown", 1: "user"},
    5: {0: "unknown", 1: "shutdown", 2: "destroyed", 3: "crashed", 4: "migrated", 5: "saved",
        6: "failed", 7: "from snapshot", 8: "daemon"},
    6: {0: "unknown", 1: "panicked"},
}


def state_reason(conn, name: str) -> tuple[str, str]:
    """The guest's state and reason as virsh words, e.g. ("running", "restored"), ("shutoff", "saved")."""
    state, reason = conn.lookupByName(name).state()
    return _STATES.get(state, str(state)), _REASONS.get(state, {}).get(reason, str(reason))


def wait_for_state(conn, name: str, state: str, timeout: float = 60.0) -> tuple[str, str]:
    """Wait until the guest's state (a virsh word, e.g. "shutoff") is ``state``; returns (state, reason)."""
    deadline = time.monotonic() + timeout
    while True:
        sr = state_reason(conn, name)
        if sr[0] == state:
            return sr
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: still {sr} after {timeout:.0f} s, wanted {state}")
        time.sleep(0.1)


def cleanup(conn) -> None:
    """Destroy and undefine every guest (with managed-save images) and remove their serial logs.

    Guests are destroyed in parallel (a destroy takes a second or two); the threads are gone when
    this returns."""
    import contextlib
    import threading

    import libvirt

    def remove(dom) -> None:
        name = dom.name()
        try:
            persistent = dom.isPersistent()   # ask first: a transient guest vanishes when destroyed
        except libvirt.libvirtError:
            return
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            if persistent:
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                  | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                                  | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                                  | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        with contextlib.suppress(FileNotFoundError):
            serial_log(name).unlink()

    threads = [threading.Thread(target=remove, args=(d,)) for d in conn.listAllDomains()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
