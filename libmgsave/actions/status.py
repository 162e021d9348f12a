"""``mgsave status``: every guest's state, saved image, effective autostart and last results."""

from __future__ import annotations

import os
from dataclasses import dataclass

from libmgsave import jsonout, report
from libmgsave.actions import DONE, Done, held, inputs
from libmgsave.context import Context
from libmgsave.history import GuestEntry
from libmgsave.inventory import ON_PEER
from libmgsave.matching import resolve
from libmgsave.plan.boot import recorded_guest, recorded_peer
from libmgsave.restorable import Restorability, Verdict
from libmgsave.saveimages import managed_image_path
from libmgsave.state import guest_record_key


@dataclass(frozen=True)
class GuestStatus:
    """One guest in ``mgsave status``: the text's line and the JSON's object."""

    connection: str
    name: str
    uuid: str
    state: str
    persistent: bool
    has_saved_image: bool
    saved_image_path: str | None
    saved_image_bytes: int | None
    saved_image_mtime: float | None  # epoch; ISO 8601 in JSON
    autostart: str  # the policy's effective autostart
    libvirt_autostart: bool | None
    last_shutdown: str | None  # the outcome the last shutdown pass recorded
    last_boot: str | None
    peer: str | None = None  # where a guest the last shutdown migrated lives now
    resume: Restorability | None = None  # whether its held image resumes on the hypervisor installed now

    def to_dict(self) -> dict:
        return {
            "connection": self.connection, "name": self.name, "uuid": self.uuid, "state": jsonout.word(self.state),
            "persistent": self.persistent, "has_saved_image": self.has_saved_image,
            "saved_image_path": self.saved_image_path, "saved_image_bytes": self.saved_image_bytes,
            "saved_image_modified": jsonout.timestamp(self.saved_image_mtime),
            "autostart": self.autostart, "libvirt_autostart": self.libvirt_autostart,
            "last_shutdown_outcome": self.last_shutdown, "last_boot_outcome": self.last_boot,
            "peer": self.peer,
            "resume": self.resume.to_dict() if self.resume else None,
        }


def run_status(ctx: Context) -> Done:
    use = inputs.pass_policy(ctx)
    policy, problems = use.policy, use.problems
    connections, warnings = inputs.connect(policy)
    guests = inputs.inventory(connections, policy, warnings)
    last_shutdown = (ctx.state.last_shutdown() or {}).get("guests", {})
    last_boot = (ctx.state.last_boot() or {}).get("guests", {})
    # Typed again only for the guests with a held image, the ones a verdict reads: the record was
    # validated once already, and a record of 10,000 guests is read at every status.
    held_keys = {guest_record_key(*g.key) for g in guests if g.has_managed_save} & last_shutdown.keys()
    recorded = {key: GuestEntry.from_dict(last_shutdown[key], key) for key in held_keys}
    verdicts = held.resume_verdicts(connections, guests, recorded)
    rows = [_row(guest, policy, last_shutdown, last_boot, verdicts.get(guest.key)) for guest in guests]
    rows += _on_peer_rows(policy, last_shutdown, last_boot, {guest_record_key(*g.key) for g in guests})
    usage, kept_warning = inputs.kept_images(ctx, policy)
    ups = _ups(policy)
    warnings += inputs.policy_warnings(use) + ([kept_warning] if kept_warning else [])
    if ctx.json:
        ctx.emit(jsonout.document("status", {
            "policy": policy.source, "policy_problems": inputs.problems_dict(problems),
            "policy_used": use.choice.to_dict(), "warnings": warnings,
            "state_dir": str(ctx.state.path), "guests": [r.to_dict() for r in rows], "kept_usage": usage.to_dict(),
            "ups": ups.to_dict() if ups else None}), "")
        return DONE
    text = report.render_status(rows) + "\n" + report.render_kept([], usage, [], listing=False)
    # "not known" is for --json, plan boot and check: a line per held image of an older record
    # (or of a driver without capabilities) would bury the ones that need the admin.
    said = [f"{r.name}: {r.resume.text}" for r in rows
            if r.resume and r.resume.verdict not in (Verdict.RESUMES, Verdict.UNKNOWN)]
    if said:
        text += "\n" + "\n".join(report.wrapped((f"saved image: {line}" for line in said), indent=""))
    if ups:
        text += "\n" + "\n".join(report.wrapped([ups.describe()], indent=""))
    if warnings:
        text += "\n" + "\n".join(report.wrapped(f"warning: {w}" for w in warnings))
    ctx.emit({}, text)
    return DONE


def _ups(policy):  # noqa: ANN001, ANN202
    """The UPS of the policy's ``power:``, read now; None without one (nothing of NUT's loaded)."""
    if policy.power is None:
        return None
    from libmgsave.power.ups import read_ups

    return read_ups(policy.power)[0]


def _on_peer_rows(policy, last_shutdown: dict, last_boot: dict, here: set[str]) -> list[GuestStatus]:
    """The guests the last shutdown migrated to a peer and that are not defined here again: they
    live there (the record says where). Their autostart is the policy's for them, as for any
    guest (it says whether the boot pass brings them home)."""
    rows = []
    for key, entry in sorted(last_shutdown.items(), key=lambda item: item[1].get("name", "")):
        if key in here:  # defined here: its own row says where it is (the record was validated)
            continue
        recorded = GuestEntry.from_dict(entry)
        peer = recorded_peer(recorded)
        if peer is None:
            continue
        guest = recorded_guest(recorded, persistent=True)
        rows.append(GuestStatus(
            connection=guest.connection, name=guest.name, uuid=guest.uuid, state=ON_PEER,
            persistent=True, has_saved_image=False, saved_image_path=None, saved_image_bytes=None,
            saved_image_mtime=None, autostart=str(resolve(policy, guest).settings.autostart),
            libvirt_autostart=None, last_shutdown=entry["outcome"],
            last_boot=last_boot.get(key, {}).get("outcome"), peer=peer))
    return rows


def _row(guest, policy, last_shutdown: dict, last_boot: dict, resume: Restorability | None) -> GuestStatus:
    key = guest_record_key(*guest.key)
    image = managed_image_path(guest.connection, guest.name) if guest.has_managed_save else None
    image_stat = None
    if image:
        try:
            image_stat = os.stat(image)
        except OSError:
            pass
    return GuestStatus(
        connection=guest.connection, name=guest.name, uuid=guest.uuid, state=str(guest.state),
        persistent=guest.persistent, has_saved_image=guest.has_managed_save, saved_image_path=image,
        saved_image_bytes=image_stat.st_size if image_stat else None,
        saved_image_mtime=image_stat.st_mtime if image_stat else None,
        autostart=str(resolve(policy, guest).settings.autostart), libvirt_autostart=guest.libvirt_autostart,
        last_shutdown=last_shutdown.get(key, {}).get("outcome"), last_boot=last_boot.get(key, {}).get("outcome"),
        resume=resume,
    )
