"""Which guest entries a new shutdown record starts with. Pure: records and facts in, entries out.

A shutdown pass records every guest running now. It also keeps what an earlier pass of the same
host cycle recorded, so that a pass killed half-way and run again still knows which guests were
running (settling the entries that pass left 'pending' whose save libvirt finished without it),
and what a boot pass stopped by a shutdown never reached (those guests are still saved).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping

from libmgsave.inventory import GuestInfo
from libmgsave.outcomes import Outcome
from libmgsave.state.records import GuestEntry, guest_record_key, pending_entry

log = logging.getLogger("mgsave")


def starting_entries(previous: dict | None, boot: dict | None, plan, complete_files: Collection[str], *,
                     boot_id: str | None) -> dict:
    """The guest list a shutdown pass writes before touching any guest.

    ``previous`` and ``boot`` are the last shutdown and boot records (None: none to trust),
    ``plan`` the pass's plan, ``complete_files`` the transient guests' save files of
    ``previous`` that are whole on disk (see ``pending_files``), and ``boot_id`` the kernel's ID
    of this boot of the host. Only a record of this same boot is continued: one left from an
    earlier boot (its boot pass died before writing a record, then the admin stopped a guest by
    hand) would make a guest the admin stopped start at the next boot."""
    entries: dict[str, GuestEntry] = {}
    previous = _of_this_boot(previous, "shutdown", boot_id)
    boot = _of_this_boot(boot, "boot", boot_id) if previous else boot
    if previous and (boot is None or boot.get("started", 0) < previous.get("started", 0)):
        log.info("continuing the shutdown record of %s (no boot since)", _when(previous))
        now = {guest_record_key(*e.guest.key): e.guest for e in plan.entries}
        entries.update(settle_interrupted(previous["guests"], now, complete_files))
    elif previous and boot and boot.get("interrupted"):
        entries.update(not_reached_by_boot_pass(previous, boot))
    for entry in plan.active:
        entries[guest_record_key(*entry.guest.key)] = pending_entry(entry)
    return entries


def _of_this_boot(record: dict | None, kind: str, boot_id: str | None) -> dict | None:
    """``record`` when it was written during this boot of the host, else None (logged)."""
    if record is None:
        return None
    if boot_id is None or record.get("boot_id") != boot_id:
        log.info("not continuing the %s record of %s: it is of an earlier boot of the host", kind, _when(record))
        return None
    return record


def pending_files(previous: dict | None) -> list[str]:
    """The save files named by entries an interrupted pass left 'pending': whether each is whole
    is the one fact about the disk ``settle_interrupted`` needs."""
    return [e["image"] for e in (previous or {}).get("guests", {}).values()
            if e.get("outcome") == Outcome.PENDING and e.get("image")]


def settle_interrupted(entries: Mapping[str, GuestEntry], guests_now: Mapping[str, GuestInfo],
                       complete_files: Collection[str]) -> dict[str, GuestEntry]:
    """``entries`` with those an interrupted pass left 'pending' whose save has completed since
    (libvirt finished it after that pass died) recorded as saved: a persistent guest now off with
    a saved image, or a transient guest gone whose save file is whole."""
    settled = dict(entries)
    for key, entry in entries.items():
        if entry.get("outcome") != Outcome.PENDING:
            continue
        guest = guests_now.get(key)
        if guest is not None and not guest.state.is_active and guest.has_managed_save:
            outcome = Outcome.SAVED
        elif guest is None and entry.get("image") in complete_files:
            outcome = Outcome.SAVED_TO_FILE
        else:
            continue
        settled[key] = GuestEntry(entry, outcome=str(outcome), note="its save, begun by an interrupted pass, completed")
        log.info("%s: found saved by the interrupted pass", entry.get("name"))
    return settled


def not_reached_by_boot_pass(previous: dict, boot: dict) -> dict[str, GuestEntry]:
    """The entries of the shutdown record before an interrupted boot pass (a shutdown came while
    it ran) for the guests that pass never started: they are still saved, so they were running
    as far as the next boot pass is concerned. Without this, an 'if-running' guest the stopped
    pass did not reach would stay off for good at the next boot, its saved state unused."""
    carried = {key: entry for key, entry in previous["guests"].items()
               if boot["guests"].get(key, {}).get("outcome") == Outcome.INTERRUPTED}
    for entry in carried.values():
        log.info("%s: carried over from the shutdown record of %s: the boot pass was stopped (%s) before it "
                 "reached it", entry.get("name"), _when(previous), boot["interrupted"])
    return carried


def _when(record: dict) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
