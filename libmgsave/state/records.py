"""The records a pass leaves in the state directory: their format, their entries, and reading them.

A record that cannot be trusted (damaged, hand-edited, from another mgsave) is never trusted
blindly nor allowed to crash a pass: reading it raises ``RecordError``, and a pass about to
replace it first sets it aside for inspection.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from libmgsave import __version__
# A record's entries are history's typed values; named here too, where records are read.
from libmgsave.history import GuestEntry, Outcome, RecordedBy, guest_record_key  # noqa: F401
from libmgsave.state.validation import (MAX_RECORD_BYTES, UnsafeFile, canonical_images,  # noqa: F401
                                        read_regular_file, record_problem)

log = logging.getLogger("mgsave")

RECORD_FORMAT = "mgsave-state"
RECORD_VERSION = 1
SHUTDOWN_RECORD = "last-shutdown.json"
BOOT_RECORD = "last-boot.json"


class RecordError(Exception):
    """A record exists but cannot be trusted (corrupt, or from an incompatible mgsave)."""


def read_record(path: Path, kind: str) -> dict | None:
    """The record at ``path``, or None when there is none.

    Raises RecordError when the file is not a regular file of a sane size (a symlink, a FIFO, a
    device, gigabytes), unreadable, not JSON, not an mgsave record of this ``kind``, of a format
    version this mgsave does not know, or has a field of the wrong type: a damaged or
    hand-edited record is never trusted blindly, nor allowed to crash or hang a pass.
    """
    try:
        raw = read_regular_file(path, MAX_RECORD_BYTES)
    except FileNotFoundError:
        return None
    except UnsafeFile as why:
        raise RecordError(f"{path}: cannot read: {why}") from None
    except OSError as error:
        raise RecordError(f"{path}: cannot read: {error.strerror}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not valid JSON (not UTF-8 text); the file is corrupt") from None
    except (ValueError, RecursionError) as error:
        raise RecordError(f"{path}: not valid JSON ({error}); the file is corrupt") from None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or data.get("kind") != kind:
        raise RecordError(f"{path}: not an mgsave {kind} record")
    version = data.get("version")
    if version != RECORD_VERSION:
        raise RecordError(
            f"{path}: written by mgsave {data.get('mgsave_version', '?')} in record format {version!r}; "
            f"this mgsave {__version__} reads format {RECORD_VERSION} only"
        )
    if not isinstance(data.get("guests"), dict):
        raise RecordError(f"{path}: has no guest list; the file is corrupt")
    problem = record_problem(data, path.parent)
    if problem:
        raise RecordError(f"{path}: {problem}; the file is corrupt")
    canonical_images(data, path.parent)
    return data


def read_trusted(path: Path, kind: str, *, quiet: bool = False, warnings: list[str] | None = None) -> dict | None:
    """The record, or None when there is none or it cannot be trusted (logged as an error unless
    ``quiet`` and, given ``warnings``, added to them for the summary)."""
    try:
        return read_record(path, kind)
    except RecordError as error:
        if not quiet:
            log.error("ignoring the %s record: %s", kind, error)
        if warnings is not None:
            warnings.append(f"ignoring the {kind} record: {error}")
        return None


def set_aside_untrusted(path: Path, kind: str, warnings: list[str]) -> None:
    """Before a pass replaces the record at ``path``: a record that cannot be trusted is renamed
    to ``<name>.untrusted-<time>`` and kept for inspection, never silently overwritten."""
    try:
        read_record(path, kind)
        return
    except RecordError as error:
        problem = str(error)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.untrusted-{stamp}")
    n = 1
    while os.path.lexists(target):
        n += 1
        target = path.with_name(f"{path.name}.untrusted-{stamp}-{n}")
    try:
        os.replace(path, target)
    except OSError as error:
        log.error("ignoring the %s record: %s; could not keep it aside (%s)", kind, problem, error.strerror)
        warnings.append(f"ignoring the {kind} record: {problem}; could not keep it aside ({error.strerror})")
        return
    log.error("ignoring the %s record: %s; kept as %s", kind, problem, target)
    warnings.append(f"ignoring the {kind} record: {problem}; kept as {target}")


BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def current_boot_id() -> str | None:
    """The kernel's ID of this boot of the host (a new one at every boot), or None when unknown.
    A record carries it, so that a pass knows whether a record is of this boot or an earlier one."""
    try:
        with open(BOOT_ID_FILE, encoding="ascii") as file:
            return file.read(100).strip() or None
    except (OSError, ValueError):
        return None


def boot_record(started: float, results, interrupted: str | None, boot_id: str | None = None) -> dict:
    """The boot record of a finished (or stopped) boot pass, from its guest results."""
    return {
        "format": RECORD_FORMAT, "kind": "boot", "version": RECORD_VERSION,
        "mgsave_version": __version__, "started": started, "finished": time.time(),
        # A boot pass stopped early (a shutdown while it ran): the next shutdown pass carries
        # over the record entries of the guests it did not reach.
        "interrupted": interrupted,
        "boot_id": boot_id,
        "guests": {guest_record_key(*r.plan.key): GuestEntry.of(
            connection=r.plan.guest.connection, name=r.plan.guest.name, uuid=r.plan.guest.uuid,
            outcome=r.outcome, ok=r.ok, messages=r.messages, started=r.started, finished=r.finished,
            bytes=r.bytes, steps=[s.to_dict() for s in r.steps], waits=[w.to_dict() for w in r.waits],
            **({"image_used": True} if r.outcome is Outcome.RESTORED else {}),
            **({"peer": r.peer} if r.peer else {})).to_dict()
            for r in results},
    }


def used_images(shutdown: dict | None, boot: dict | None) -> frozenset[str]:
    """The keys of the guests of ``shutdown`` whose save file a boot pass since then restored:
    stale the moment the guest ran on, so never restored again (even when it could not be removed)."""
    if not booted_since(shutdown, boot):
        return frozenset()
    return frozenset(key for key, entry in boot["guests"].items() if entry.get("image_used"))


def booted_since(shutdown: dict | None, boot: dict | None) -> bool:
    """True when a boot pass ran after the shutdown pass of ``shutdown``."""
    return bool(shutdown and boot and boot["started"] > shutdown["started"])


def pending_entry(entry) -> dict:
    """A guest's entry in the shutdown record (as written), before anything is done to it
    (``entry`` is its ``GuestPlan``)."""
    g = entry.guest
    return GuestEntry.of(
        connection=g.connection, name=g.name, uuid=g.uuid, persistent=g.persistent, state=str(g.state),
        memory_kib=g.memory_kib, title=g.title, metadata=dict(g.metadata), outcome=Outcome.PENDING,
        image=entry.image, planned=[str(a) for a in entry.actions],
    ).to_dict()
