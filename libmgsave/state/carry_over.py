"""Which guest entries a new shutdown record starts with. Pure: records and facts in, entries out.

A shutdown pass (or ``mgsave evacuate``) records every guest running now. It also keeps what
earlier records say of guests that are not running now:

- a record of this same boot of the host, with no boot pass since, is continued whole: a pass
  killed half-way and run again still knows which guests were running (settling the entries it
  left 'pending' whose save libvirt finished without it);
- of any other record, whatever boot it came from, the entries of guests still away: saved
  here and never resumed, saved to a file never restored, living on a peer and not back, or
  never reached by a boot pass that was stopped. They stay in the records until the guest is
  back and running. Nothing else of an earlier boot is continued: a guest a boot pass brought
  up and the admin stopped by hand afterwards must not start again at the next boot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping

from libmgsave.inventory import GuestInfo
from libmgsave.history import GuestEntry, Outcome, guest_record_key
from libmgsave.state.records import pending_entry

log = logging.getLogger("mgsave")

# What a boot pass did to a guest that ends its time away: it runs here again, or the pass
# decided for good (its failed image set aside, or it is gone).
_BACK = frozenset({Outcome.RESUMED, Outcome.RESTORED, Outcome.STARTED, Outcome.BOOTED_FRESH, Outcome.RETURNED,
                   Outcome.LEFT_OFF, Outcome.VANISHED})


def starting_entries(previous: dict | None, boot: dict | None, plan, complete_files: Collection[str], *,
                     boot_id: str | None) -> dict:
    """The guest list a shutdown pass writes before touching any guest.

    ``previous`` and ``boot`` are the last shutdown and boot records (None: none to trust),
    ``plan`` the pass's plan, ``complete_files`` the save files of ``previous`` that are whole
    on disk (see ``files_to_check``), and ``boot_id`` the kernel's ID of this boot of the host."""
    entries: dict[str, dict] = {}
    if previous:
        now = {guest_record_key(*e.guest.key): e.guest for e in plan.entries}
        settled = settle_interrupted(previous["guests"], now, complete_files)
        if not _of_this_boot(previous, boot_id):
            why = "it is of an earlier boot of the host"
        elif _booted_after(boot, previous["started"]):
            why = "a boot pass ran since"
        else:
            log.info("continuing the shutdown record of %s (no boot since)", _when(previous))
            entries.update(settled)
            why = None
        if why:
            log.info("not continuing the shutdown record of %s: %s; keeping the guests still away", _when(previous),
                     why)
            entries.update(still_away(dict(previous, guests=settled), boot, now, complete_files))
    for entry in plan.active:
        entries[guest_record_key(*entry.guest.key)] = pending_entry(entry)
    return entries


def _of_this_boot(record: dict, boot_id: str | None) -> bool:
    return boot_id is not None and record.get("boot_id") == boot_id


def _booted_after(boot: dict | None, when: float) -> bool:
    return bool(boot and boot.get("started", 0) > when)


def files_to_check(previous: dict | None) -> list[str]:
    """The save files named by entries a pass left 'pending' or saved to a file: whether each is
    whole is the one fact about the disk ``settle_interrupted`` and ``still_away`` need."""
    return [e["image"] for e in (previous or {}).get("guests", {}).values()
            if e.get("outcome") in (Outcome.PENDING, Outcome.SAVED_TO_FILE) and e.get("image")]


def pending_files(previous: dict | None) -> list[str]:
    """The save files named by entries an interrupted pass left 'pending'."""
    return [e["image"] for e in (previous or {}).get("guests", {}).values()
            if e.get("outcome") == Outcome.PENDING and e.get("image")]


def settle_interrupted(entries: Mapping[str, dict], guests_now: Mapping[str, GuestInfo],
                       complete_files: Collection[str]) -> dict[str, dict]:
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
        settled[key] = GuestEntry.from_dict(entry).replace(
            outcome=outcome, note="its save, begun by an interrupted pass, completed").to_dict()
        log.info("%s: found saved by the interrupted pass", entry.get("name"))
    return settled


def still_away(previous: dict, boot: dict | None, guests_now: Mapping[str, GuestInfo],
               complete_files: Collection[str]) -> dict[str, dict]:
    """The entries of ``previous`` (of any boot) whose guest is still away now: no boot pass
    since the entry was written brought it back (``boot``: the last boot record), it does not
    run here, and it is where the entry says: saved here with its image, in its whole save
    file, on its peer; or, never reached by a boot pass that was stopped, still off here."""
    carried = {}
    for key, entry in previous["guests"].items():
        why = _away(entry, guests_now.get(key), _boot_outcome(boot, key, entry, previous), complete_files)
        if why:
            carried[key] = entry
            log.info("%s: carried over from the shutdown record of %s: %s", entry.get("name"), _when(previous), why)
    return carried


def _boot_outcome(boot: dict | None, key: str, entry: dict, record: dict) -> str | None:
    """What the boot pass of ``boot`` did to the guest, when that pass ran after the entry was
    written (an entry ``mgsave evacuate`` added to a record says when)."""
    if not _booted_after(boot, entry.get("recorded", record["started"])):
        return None
    return boot["guests"].get(key, {}).get("outcome")


def _away(entry: dict, guest: GuestInfo | None, boot_outcome: str | None,
          complete_files: Collection[str]) -> str | None:
    """Why the guest of ``entry`` is still away, or None when it is back (or gone for good)."""
    if boot_outcome in _BACK or (guest is not None and guest.state.is_active):
        return None
    outcome = entry.get("outcome")
    if outcome == Outcome.SAVED and guest is not None and guest.has_managed_save:
        return "it is still saved (never resumed since)"
    if outcome == Outcome.SAVED_TO_FILE and guest is None and entry.get("image") in complete_files:
        return "its save file is whole (never restored since)"
    if outcome == Outcome.MIGRATED and entry.get("peer"):
        return f"it lives on {entry['peer']} (not back since)"
    if boot_outcome == Outcome.INTERRUPTED and guest is not None:
        return "the boot pass since was stopped before it reached it"
    return None


def _when(record: dict) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
