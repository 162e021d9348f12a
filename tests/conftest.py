"""The suite's three tiers, marked here by directory so that each can be run on its own:

    tests/unit/   marker ``unit``        pure: no libvirt, no daemon; seconds
    tests/cli/    marker ``testdriver``  the real CLI on libvirt's built-in test:///default driver
    tests/        marker ``system``      the real rig (private libvirtd, QEMU guests: also ``rig``),
                                         systemd in a container (also ``systemd``), the packages

A test that uses the rig's fixtures is marked ``rig`` wherever it is, so ``-m "not rig"`` is the
fast loop. The rig's fixtures (and its one hook, which starts the rig before the first test
while the process is still single-threaded) live in tests/rig/fixtures.py.
"""

from pathlib import Path

import pytest

from tests.rig.fixtures import make_guests, pytest_collection_finish, rig, rig_conn  # noqa: F401

HERE = Path(__file__).resolve().parent
TIER_OF_DIRECTORY = {"unit": "unit", "cli": "testdriver"}
RIG_FIXTURES = {"rig", "rig_conn", "make_guests"}
NEEDS_LIBVIRT = RIG_FIXTURES | {"hv"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(item.fspath).resolve().relative_to(HERE).parts
        tier = TIER_OF_DIRECTORY.get(parts[0], "system") if len(parts) > 1 else "system"
        fixtures = set(getattr(item, "fixturenames", ()))
        if tier == "unit" and fixtures & NEEDS_LIBVIRT:
            raise pytest.UsageError(f"{item.nodeid}: a unit test must not need libvirt "
                                    f"({', '.join(sorted(fixtures & NEEDS_LIBVIRT))}): move it to tests/cli/")
        if tier == "testdriver" and fixtures & RIG_FIXTURES:
            raise pytest.UsageError(f"{item.nodeid}: a test-driver test must not need the rig: move it to tests/")
        item.add_marker(tier)
        if fixtures & RIG_FIXTURES:
            item.add_marker("rig")
