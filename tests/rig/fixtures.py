"""pytest fixtures for the real-hypervisor rig (imported by tests/conftest.py).

    rig          session: the started Rig (private libvirtd on qemu:///system); skipped when the
                 machine cannot run it (not root, packages missing), but a failure under CI=true
    rig_conn     function: a libvirt connection to the rig; after the test the rig is reset (no
                 guests, no save images, libvirtd running, fault mounts gone, empty /var/lib/mgsave)
    make_guests  function: make_guests(n=1, *, start=True, **define_guests_kwargs) -> [names];
                 started guests are ticking when it returns

Tests using them carry ``@pytest.mark.rig``. The hook ``pytest_collection_finish`` (imported into
tests/conftest.py too) starts the rig before the first test, while the process is single-threaded.
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


_early: dict = {}


def _start() -> Rig:
    reason = unavailable_reason()
    if reason:
        raise _Unavailable(reason)
    ensure_image()            # download/build (or take from the cache) before the clock starts
    r = Rig()
    try:
        r.start()
    except OSError as exc:
        if exc.errno == errno.EPERM:     # e.g. an unprivileged container: no unshare/mount
            raise _Unavailable(f"cannot isolate a private libvirtd here: {exc}") from exc
        raise
    return r


class _Unavailable(Exception):
    pass


def pytest_collection_finish(session):
    """Start the rig right after collection, if any selected test needs it.

    Entering a mount namespace needs a single-threaded process; later, other tests may have left
    threads behind (thread pools, a libvirt event loop), so the rig starts before any test runs.
    The ``rig`` fixture picks it up (or the error) from here."""
    if session.config.option.collectonly:
        return
    if any("rig" in getattr(item, "fixturenames", ()) for item in session.items):
        try:
            _early["rig"] = _start()
        except Exception as exc:          # reported by the fixture, in the tests that need it
            _early["error"] = exc


@pytest.fixture(scope="session")
def rig():
    try:
        if "error" in _early:
            raise _early.pop("error")
        r = _early.pop("rig", None) or _start()
    except _Unavailable as exc:
        _unavailable(str(exc))
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


__all__ = ["rig", "rig_conn", "make_guests", "pytest_collection_finish", "RigError"]
