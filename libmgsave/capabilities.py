"""What a connection's driver refuses of what a policy may ask for, told from the driver's name
(libvirt's ``getType``), so that ``plan`` and ``check`` predict the refusal instead of the pass
finding out (pure).

libvirt has no call that says which flags an operation takes, and trying one is no question: a
start with the flag starts the guest. The drivers' own flag checks are the source: qemu's takes
``VIR_DOMAIN_START_BYPASS_CACHE`` and ``VIR_DOMAIN_SAVE_BYPASS_CACHE`` on every save, restore and
start; the test driver saves with it but refuses it when it starts or restores a guest.
"""

from __future__ import annotations

BYPASS_CACHE_DRIVERS = frozenset({"QEMU"})


def bypass_cache_refusal(driver: str | None) -> str | None:
    """Why a connection of ``driver`` would refuse ``bypass_cache``; None when it takes it, or
    when the driver is not known (nothing to predict)."""
    if driver is None or driver.upper() in BYPASS_CACHE_DRIVERS:
        return None
    return f"the {driver.lower()} driver refuses it when it starts or restores a guest (only qemu's takes it)"
