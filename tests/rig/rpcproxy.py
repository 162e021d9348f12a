"""A man in the middle of libvirt's RPC: forwards a client's connection to the daemon's socket,
and cuts it (both ways) when the client calls a given procedure.

libvirt's wire format: every message is a 4-byte big-endian length (of the whole message, this
word included), then a header of big-endian words: program, version, procedure, type, serial,
status. ``CutAt(procedure)`` lets every message through (the handshake, authentication, keepalive
pings) until the client sends one calling ``procedure`` of the remote program: then the
connection drops, as if the daemon had died just then. A new connection is served afresh (and
cut again at the same call).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from pathlib import Path

REMOTE_PROGRAM = 0x20008086
REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS = 273


class CutAt:
    def __init__(self, listen: Path, daemon_socket: str, procedure: int):
        self.listen, self.daemon_socket, self.procedure = listen, daemon_socket, procedure
        self.cuts = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(listen))
        self._server.listen(8)
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.daemon_socket)
            threading.Thread(target=self._client_to_daemon, args=(client, upstream), daemon=True).start()
            threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()

    def _client_to_daemon(self, client: socket.socket, upstream: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            buffer += data
            while len(buffer) >= 16:
                length, program, _version, procedure = struct.unpack(">IIII", buffer[:16])
                if program == REMOTE_PROGRAM and procedure == self.procedure:
                    self.cuts += 1
                    _drop(client, upstream)
                    return
                if len(buffer) < length:
                    break
                upstream.sendall(buffer[:length])
                buffer = buffer[length:]
        _drop(client, upstream)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    while True:
        try:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
        except OSError:
            break
    _drop(source, sink)


def _drop(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
