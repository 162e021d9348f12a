# The second tier: the real CLI on libvirt's built-in test driver (see tests/testdriver.py).
import uuid

import pytest

from libmgsave import interrupt, state
from tests.testdriver import hv  # noqa: F401


@pytest.fixture
def reboot(tmp_path, monkeypatch):
    """The kernel's boot ID as mgsave reads it: each call is a new boot of the host."""
    boot_id = tmp_path / "boot_id"
    monkeypatch.setattr(state.records, "BOOT_ID_FILE", str(boot_id))

    def new_boot():
        interrupt.reset()
        boot_id.write_text(f"{uuid.uuid4()}\n")

    new_boot()
    return new_boot
