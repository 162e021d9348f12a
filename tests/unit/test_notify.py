"""notify.py against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from libmgsave import notify


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A bound datagram socket whose path is $NOTIFY_SOCKET; yields it for ``recv``."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_status_line_reaches_the_socket(notify_socket):
    assert notify.status("saving 3 guests: db1, web1\nweb2")
    assert receive(notify_socket) == "STATUS=saving 3 guests: db1, web1 web2"


def test_extend_timeout_is_in_microseconds(notify_socket):
    assert notify.extend_timeout(90)
    assert receive(notify_socket) == "EXTEND_TIMEOUT_USEC=90000000"
    assert notify.extend_timeout(0.25)
    assert receive(notify_socket) == "EXTEND_TIMEOUT_USEC=250000"


def test_ready_and_stopping(notify_socket):
    assert notify.ready()
    assert receive(notify_socket) == "READY=1"
    assert notify.stopping()
    assert receive(notify_socket) == "STOPPING=1"


def test_abstract_namespace_socket(monkeypatch):
    name = f"mgsave-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.status("abstract")
        assert receive(sock) == "STATUS=abstract"


def test_no_socket_is_a_quiet_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.status("nobody listens") is False
    assert notify.extend_timeout(10) is False
    assert notify.ready() is False


def test_a_dead_socket_never_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert notify.status("into the void") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert notify.ready() is False


def test_works_without_systemd_python():
    """notify must not import systemd-python at all."""
    code = "import sys; sys.modules['systemd'] = None; from libmgsave import notify; print(notify.ready())"
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
