"""The one thin wrapper around libvirt.

Every libvirt call mgsave makes goes through ``Host`` or ``Guest`` here, and every
``libvirt.libvirtError`` is turned into one of mgsave's own errors by ``translate_error``,
the only place that looks at libvirt's error codes. Method names say what they mean for a
guest (``save_memory_state``), not which libvirt call they make (``managedSave``).

    translate   libvirt's errors -> mgsave's (``translate_error``)
    guest       ``Guest``: one domain's operations
    host        ``Host``: one connection, its guests, restoring save files
    connections ``Connections``: a pass's hosts, and the one place that reconnects
    peer        peer hosts, each call within ``PEER_TIMEOUT``; guests' names for the completion
"""

from libmgsave.hypervisor.connections import Connections
from libmgsave.hypervisor.guest import Guest, JobProgress
from libmgsave.hypervisor.host import Host
from libmgsave.hypervisor.peer import PEER_TIMEOUT, ask_peer, guest_names, open_peer
from libmgsave.hypervisor.translate import translate_error

__all__ = ["PEER_TIMEOUT", "Connections", "Guest", "Host", "JobProgress", "ask_peer", "guest_names", "open_peer",
           "translate_error"]
