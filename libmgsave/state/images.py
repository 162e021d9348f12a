"""The save files the state directory holds: transient guests' images, and images kept after a failure."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from libmgsave.errors import HypervisorError
from libmgsave.inventory import GuestInfo
from libmgsave.outcomes import Outcome
from libmgsave.state.records import GuestEntry

log = logging.getLogger("mgsave")


def transient_images_without_record(images: Path, record: dict | None,
                                     read_guest: Callable[[str], GuestInfo | None],
                                     warnings: list[str]) -> list[GuestEntry]:
    """Save files of transient guests under ``images`` that the shutdown record does not name.

    Without a usable record they would never be restored: each file is read back with
    ``read_guest`` (libvirt stores the guest's definition in it; None: no connection could)
    and returned as a record-like entry, so the boot pass restores it. With a record, a file it
    does not name is only reported.
    """
    try:
        files = sorted(p for p in images.iterdir() if p.name.endswith(".save"))
    except OSError:
        return []
    named = {entry.get("image") for entry in (record or {}).get("guests", {}).values()}
    entries = []
    for path in files:
        if str(path) in named:
            continue
        if record is not None:
            message = (f"{path}: a saved transient guest that the shutdown record does not name; kept, "
                       f"not restored (restore it by hand: virsh restore {path})")
            log.warning("%s", message)
            warnings.append(message)
            continue
        guest = read_guest(str(path))
        if guest is None:
            warnings.append(f"{path}: a saved transient guest that no connection can read; kept, not restored")
            continue
        message = f"{guest.name}: restoring its saved image {path}, found with no usable record to name it"
        log.warning("%s", message)
        warnings.append(message)
        entries.append(GuestEntry(
            connection=guest.connection, name=guest.name, uuid=guest.uuid, persistent=False,
            memory_kib=guest.memory_kib, title=guest.title, metadata=dict(guest.metadata),
            outcome=str(Outcome.SAVED_TO_FILE), image=str(path),
        ))
    return entries


def read_with_any(hosts, path: str) -> GuestInfo | None:
    """The guest a save file holds, read through the first of ``hosts`` that can; None (logged)
    when none can."""
    problems = []
    for host in hosts:
        try:
            return host.saved_image_guest(path)
        except HypervisorError as error:
            problems.append(error.message)
    log.error("%s: a saved transient guest that no connection can read; kept, not restored (%s)",
              path, "; ".join(problems) or "no connection")
    return None


def keep_failed_image(source: str | None, failed_images: Path, name: str) -> str | None:
    """Keep a managed-save image that failed to resume in ``failed_images``, before libvirt
    deletes it; its new path, or None when that is impossible."""
    if source is None or not os.path.exists(source):
        return None
    try:
        failed_images.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.error("%s: could not keep the image: %s: %s", name, error.strerror, failed_images)
        return None
    target = failed_images / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.save"
    try:
        os.link(source, target)  # instant on the same filesystem; the data outlives libvirt's unlink
    except OSError:
        try:
            shutil.copy2(source, target)
        except OSError as error:
            log.error("%s: could not keep the image: %s", name, error)
            with contextlib.suppress(OSError):
                target.unlink()
            return None
    return str(target)


def set_aside_failed_file(path: str, failed_images: Path) -> Path:
    """Move a transient guest's save file that failed to restore into ``failed_images``."""
    kept = failed_images / Path(path).name
    kept.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.replace(path, kept)
    return kept
