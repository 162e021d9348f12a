"""pytest fixtures for the real-hypervisor rig (imported by tests/conftest.py).

    rig          session: the started Rig (private libvirtd on qemu:///system); skipped when the
                 machine cannot run it (not root, packages missing), but a failure under CI=true
    rig_conn     function: a libvirt connection to the rig; after the test the rig is reset (no
                 guests, no save images, libvirtd running, fault mounts gone, empty /var/lib/mgsave)
    make_guests  function: make_guests(n=1, *, start=True, **define_guests_kwargs) -> [names];
                 started guests are ticking when it returns

Tests using them carry ``@pytest.mark.rig``.
"""

from __future__ import annotations

import errno
import os

import pytest

from .daemon import Rig, RigError, unavailable_reason
from .guests import define_guests, start_and_wait_ticking
from .image import ensure_image


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _unavailable(reason: str):
    if _in_ci():
        pytest.fail(f"test rig unavailable under CI: {reason}", pytrace=False)
    pytest.skip(f"test rig unavailable: {reason}")


@pytest.fixture(scope="session")
def rig():
    reason = unavailable_reason()
    if reason:
        _unavailable(reason)
    ensure_image()            # download/build (or take from the cache) before the clock starts
    r = Rig()
    try:
        r.start()
    except OSError as exc:
        if exc.errno == errno.EPERM:     # e.g. an unprivileged container: no unshare/mount
            _unavailable(f"cannot isolate a private libvirtd here: {exc}")
        raise
    old = os.environ.get("MGSAVE_RIG")
    os.environ["MGSAVE_RIG"] = "1"
    try:
        yield r
    finally:
        if old is None:
            os.environ.pop("MGSAVE_RIG", None)
        else:
            os.environ["MGSAVE_RIG"] = old
        r.stop()


@pytest.fixture
def rig_conn(rig):
    conn = rig.connect()
    try:
        yield conn
    finally:
        try:
            conn.close()
        except Exception:
            pass
        rig.reset()


@pytest.fixture
def make_guests(rig, rig_conn):
    calls = []

    def make(n: int = 1, *, start: bool = True, prefix: str | None = None, **kw) -> list[str]:
        calls.append(n)
        if prefix is None:
            prefix = "rig" if len(calls) == 1 else f"rig{len(calls)}"
        names = define_guests(rig_conn, n, prefix=prefix, **kw)
        if start:
            start_and_wait_ticking(rig_conn, names)
        return names

    return make


__all__ = ["rig", "rig_conn", "make_guests", "RigError"]
