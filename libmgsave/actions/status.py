"""``mgsave status``: every guest's state, saved image, effective autostart and last results."""

from __future__ import annotations

import os

from libmgsave import report
from libmgsave.actions import inputs
from libmgsave.context import Context
from libmgsave.matching import resolve
from libmgsave.saveimages import managed_image_path
from libmgsave.state import guest_record_key


def run_status(ctx: Context) -> None:
    policy, problems = inputs.pass_policy(ctx)
    connections, warnings = inputs.connect(policy)
    guests = inputs.inventory(connections, policy, warnings)
    last_shutdown = (ctx.state.last_shutdown() or {}).get("guests", {})
    last_boot = (ctx.state.last_boot() or {}).get("guests", {})
    rows = [_row(guest, policy, last_shutdown, last_boot) for guest in guests]
    rows += _on_peer_rows(last_shutdown, last_boot, {guest_record_key(*g.key) for g in guests})
    usage, kept_warning = inputs.kept_images(ctx, policy)
    warnings += ctx.warnings + ([kept_warning] if kept_warning else [])
    data = {"policy": policy.source, "policy_problems": inputs.problems_dict(problems), "warnings": warnings,
            "state_dir": str(ctx.state.path), "guests": rows, "kept": usage.to_dict()}
    text = "" if ctx.json else report.render_status(rows) + "\n" + report.render_kept([], usage, [], listing=False)
    if warnings and not ctx.json:
        text += "\n" + "\n".join(f"warning: {w}" for w in warnings)
    ctx.emit(data, text)


def _on_peer_rows(last_shutdown: dict, last_boot: dict, here: set[str]) -> list[dict]:
    """The guests the last shutdown migrated to a peer and that are not defined here again: they
    live there (the record says where)."""
    rows = []
    for key, entry in sorted(last_shutdown.items(), key=lambda item: item[1].get("name", "")):
        if key in here or entry.get("outcome") != "migrated" or not entry.get("peer"):
            continue
        rows.append({"connection": entry["connection"], "name": entry["name"], "uuid": entry["uuid"],
                     "state": f"on peer {entry['peer']}", "peer": entry["peer"], "persistent": True,
                     "saved_image": False, "image_path": None, "image_bytes": None, "image_mtime": None,
                     "autostart": "-", "libvirt_autostart": None, "last_shutdown": entry["outcome"],
                     "last_boot": last_boot.get(key, {}).get("outcome")})
    return rows


def _row(guest, policy, last_shutdown: dict, last_boot: dict) -> dict:
    key = guest_record_key(*guest.key)
    image = managed_image_path(guest.connection, guest.name) if guest.has_managed_save else None
    image_stat = None
    if image:
        try:
            image_stat = os.stat(image)
        except OSError:
            pass
    return {
        "connection": guest.connection,
        "name": guest.name,
        "uuid": guest.uuid,
        "state": str(guest.state),
        "persistent": guest.persistent,
        "saved_image": guest.has_managed_save,
        "image_path": image,
        "image_bytes": image_stat.st_size if image_stat else None,
        "image_mtime": image_stat.st_mtime if image_stat else None,
        "autostart": str(resolve(policy, guest).settings.autostart),
        "libvirt_autostart": guest.libvirt_autostart,
        "last_shutdown": last_shutdown.get(key, {}).get("outcome"),
        "last_boot": last_boot.get(key, {}).get("outcome"),
    }
