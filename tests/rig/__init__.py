"""The real-hypervisor test rig: a private libvirtd (TCG QEMU) and tiny guests with a heartbeat.

    from tests.rig import Rig, define_guests, start_and_wait_ticking, last_tick

    with Rig() as rig:                        # private mount namespace + libvirtd; qemu:///system
        conn = rig.connect()
        names = define_guests(conn, 2, fill_mib=300)
        start_and_wait_ticking(conn, names)
        ...

See docs/TESTRIG.md. pytest fixtures are in tests.rig.fixtures; the command line is
``python -m tests.rig --help``.
"""

from .daemon import (MGSAVE_STATE_DIR, SAVE_DIR, SERIAL_DIR, URI, Rig, RigError,
                     unavailable_reason)
from .guests import (DEFAULT_MEMORY_MIB, boots, cleanup, define_guests, domain_xml, last_tick,
                     serial_log, serial_text, start_and_wait_ticking, state_reason, ticks,
                     wait_for_state, wait_for_tick_after)
from .image import GuestImage, ImageBuildError, cache_dir, ensure_image

__all__ = [
    "Rig", "RigError", "URI", "SAVE_DIR", "SERIAL_DIR", "MGSAVE_STATE_DIR", "unavailable_reason",
    "DEFAULT_MEMORY_MIB", "define_guests", "domain_xml", "start_and_wait_ticking", "last_tick",
    "ticks", "boots", "serial_log", "serial_text", "wait_for_tick_after", "state_reason",
    "wait_for_state", "cleanup", "GuestImage", "ImageBuildError", "cache_dir", "ensure_image",
]
