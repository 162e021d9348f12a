"""The open connections of a pass, and the one place that reconnects when a daemon went away."""

from __future__ import annotations

import logging
import threading
import time

from libmgsave.errors import HypervisorUnavailable
from libmgsave.hypervisor.guest import Guest
from libmgsave.hypervisor.host import Host

log = logging.getLogger("mgsave")


class Connections:
    """The open hosts of a pass. A call that finds its daemon gone goes through
    ``call_with_reconnect``: one thread at a time reconnects (until ``give_up_at``), the others
    find the connection alive again, and the call is made once more. No other code handles a
    lost connection."""

    def __init__(self, hosts: dict[str, Host], give_up_at: float):
        self._hosts = hosts
        self._give_up_at = give_up_at  # time.monotonic()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, uris, *, retry_for: float, give_up_at: float) -> tuple[Connections, dict[str, str]]:
        """Open every URI; returns the connections that answered and, by URI, why each other one
        did not. Raises HypervisorUnavailable when none answered."""
        hosts, unreachable = {}, {}
        for uri in uris:
            try:
                hosts[uri] = Host.open(uri, retry_for=retry_for)
            except HypervisorUnavailable as error:
                log.error("cannot reach %s: %s", uri, error.message)
                unreachable[uri] = error.message
        if not hosts:
            raise HypervisorUnavailable(
                "no libvirt connection could be opened: " + ", ".join(uris),
                hint="is the libvirt daemon running? (systemctl status libvirtd)",
            )
        return cls(hosts, give_up_at), unreachable

    def uris(self) -> list[str]:
        return list(self._hosts)

    def drop(self, uri: str) -> None:
        """Give up on ``uri`` for the rest of the pass (its guests could not be listed)."""
        host = self._hosts.pop(uri, None)
        if host is not None:
            host.close()

    def host(self, uri: str) -> Host:
        return self._hosts[uri]

    def hosts(self) -> list[Host]:
        return list(self._hosts.values())

    def guest(self, uri: str, uuid: str) -> Guest:
        """The guest's handle, reconnecting first when the daemon went away."""
        return self.call_with_reconnect(uri, lambda: self._hosts[uri].guest(uuid))

    def call_with_reconnect(self, uri: str, call, *, after_reconnect=None):
        """``call()``; when it fails because the connection to ``uri`` is lost, reconnect, then
        ``after_reconnect(error)`` (when given: it may find that the call had gone through before
        the connection dropped, and return what to return instead of calling again, else None)
        and ``call()`` once more. Raises HypervisorUnavailable when reconnecting fails or the
        connection is lost again."""
        try:
            return call()
        except HypervisorUnavailable as error:
            self._reconnect(uri)
            if after_reconnect is not None:
                instead = after_reconnect(error)
                if instead is not None:
                    return instead
            return call()

    def _reconnect(self, uri: str) -> None:
        host = self._hosts[uri]
        with self._lock:
            if host.is_alive():
                return  # another thread did it
            remaining = max(0.0, self._give_up_at - time.monotonic())
            log.warning("lost the connection to %s; reconnecting", uri)
            host.reconnect(retry_for=remaining)
            log.info("reconnected to %s", uri)
