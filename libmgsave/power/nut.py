"""NUT's network protocol, as upsd speaks it on TCP (port 3493): the few commands mgsave needs.

The protocol is lines of words, a word with spaces in double quotes (``"`` and ``\\`` escaped by
a backslash); an answer is one line, ``ERR <CODE>`` on an error (docs/net-protocol.txt in NUT).
mgsave speaks it itself rather than through Debian's python3-nut (PyNUTClient): that module, as
Debian 12 ships it (NUT 2.8.0), is built on ``telnetlib`` (deprecated since Python 3.11, gone in
3.13, Debian 13's), connects without a timeout and reads a line of any length; and it would be
one more dependency for four commands.

Whatever upsd (or whatever answers on its port) sends is untrusted: every wait is bounded by one
deadline for the whole exchange (name resolution included), a line by ``MAX_LINE`` bytes, and
what is read is checked against what was asked.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from dataclasses import dataclass

MAX_LINE = 1024  # upsd's answers are short: a variable's value is at most 256 bytes
_QUOTED = {'"': '\\"', "\\": "\\\\"}


class NutError(Exception):
    """The exchange failed. ``code`` is upsd's own (``ACCESS-DENIED``, ``UNKNOWN-UPS``,
    ``DATA-STALE``...) when it answered with one, else None (no answer, a broken one)."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code


def quote(word: str) -> str:
    """``word`` as one word of the protocol. Raises ValueError for a character a line cannot
    carry (a control character: a newline would end the command there)."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in word):
        raise ValueError("it holds a control character")
    if word and not any(char in word for char in ' "\\'):
        return word
    return '"' + "".join(_QUOTED.get(char, char) for char in word) + '"'


def split_words(line: str) -> list[str]:
    """A line of the protocol as its words, quotes and escapes undone. Raises NutError for an
    unterminated quote."""
    words: list[str] = []
    word: list[str] | None = None  # None: between two words
    quoted = escaped = False
    for char in line:
        if escaped:
            word.append(char)  # type: ignore[union-attr]
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
            else:
                word.append(char)  # type: ignore[union-attr]
        elif char == " ":
            if word is not None:
                words.append("".join(word))
            word = None
        else:
            word = [] if word is None else word
            if char == '"':
                quoted = True
            else:
                word.append(char)
    if quoted or escaped:
        raise NutError(f"a broken answer (an unterminated quote): {line[:80]!r}")
    if word is not None:
        words.append("".join(word))
    return words


@dataclass
class NutConnection:
    """One connection to upsd, every wait bounded by ``deadline`` (a ``time.monotonic()``)."""

    sock: socket.socket
    deadline: float
    _buffer: bytes = b""

    @classmethod
    def open(cls, host: str, port: int, timeout: float) -> NutConnection:
        """Connects within ``timeout`` seconds, the name's resolution included. Raises NutError."""
        deadline = time.monotonic() + timeout
        addresses = _resolve(host, port, deadline)
        last: OSError | None = None
        for family, kind, proto, _name, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sock.connect(address)
                return cls(sock, deadline)
            except OSError as error:
                sock.close()
                last = error
            if time.monotonic() >= deadline:
                break
        raise NutError(f"cannot connect to {host} port {port}: {_reason(last)}")

    def close(self) -> None:
        self.sock.close()

    def ask(self, *words: str) -> list[str]:
        """Sends the command, returns the answer's words. Raises NutError: on ``ERR <CODE>`` (with
        the code), no answer within the deadline, a connection closed or a line too long."""
        try:
            self.sock.settimeout(max(0.01, self.deadline - time.monotonic()))
            self.sock.sendall((" ".join(quote(word) for word in words) + "\n").encode())
        except OSError as error:
            raise NutError(f"cannot send to upsd: {_reason(error)}") from None
        answer = split_words(self._line())
        if answer[:1] == ["ERR"]:
            code = answer[1] if len(answer) > 1 else "?"
            raise NutError(f"upsd answered ERR {code}", code)
        return answer

    def _line(self) -> str:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise NutError(f"an answer longer than {MAX_LINE} bytes: not upsd, or a broken one")
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise NutError("no answer in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(MAX_LINE)
            except TimeoutError:
                raise NutError("no answer in time") from None
            except OSError as error:
                raise NutError(f"the connection failed: {_reason(error)}") from None
            if not chunk:
                raise NutError("upsd closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        if len(line) > MAX_LINE:
            raise NutError(f"an answer longer than {MAX_LINE} bytes: not upsd, or a broken one")
        return line.decode("utf-8", "replace").rstrip("\r")


def _resolve(host: str, port: int, deadline: float) -> list[tuple]:
    """``getaddrinfo`` has no timeout of its own: it runs in a thread waited for until the
    deadline (the thread, a daemon, ends with the resolver's own timeouts if it must)."""
    answers: queue.Queue = queue.Queue(1)

    def lookup() -> None:
        try:
            answers.put(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as error:
            answers.put(error)

    threading.Thread(target=lookup, name="nut-resolve", daemon=True).start()
    try:
        found = answers.get(timeout=max(0.01, deadline - time.monotonic()))
    except queue.Empty:
        raise NutError(f"cannot resolve {host}: no answer in time") from None
    if isinstance(found, OSError):
        raise NutError(f"cannot resolve {host}: {_reason(found)}")
    return found


def _reason(error: OSError | None) -> str:
    if isinstance(error, TimeoutError) or error is None:
        return "no answer in time"
    return error.strerror or str(error)
