"""Turning plans, pass results and status into text for people (JSON comes from ``to_dict``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from libmgsave.outcomes import Outcome, PassResult, Severity
from libmgsave.plan import Plan, PassKind
from libmgsave.policyfile.settings import setting_text


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def size(n: float | None) -> str:
    if not n:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _guest_label(entry, many_connections: bool) -> str:
    return f"{entry.guest.name} ({entry.guest.connection})" if many_connections else entry.guest.name


def _channels_token(entry) -> str:
    """`` (4 channels)`` when the guest's save or restore uses parallel channels."""
    return f" ({entry.save_channels} channels)" if entry.save_channels > 1 else ""


def render_plan(plan: Plan, *, settings: bool = True) -> str:
    """The plan as a table, then each guest's effective settings with where each came from."""
    many = len({e.guest.connection for e in plan.entries}) > 1
    names = {e.key: e.guest.name for e in plan.entries}
    lines = []
    limits = plan.limits
    source = plan.policy_source or "built-in defaults"
    if plan.kind is PassKind.SHUTDOWN:
        lines.append(
            f"Shutdown plan (policy: {source}; deadline {limits.shutdown_deadline:g} s; "
            f"up to {limits.max_parallel_saves} saves at once)"
        )
        for uri, rate in sorted((plan.rates or {}).items()):
            lines.append(f"  estimates on {uri} assume {size(rate.bytes_per_second)}/s: {rate.source}")
    else:
        delay = f"; {limits.start_delay:g} s between starts" if limits.start_delay else ""
        lines.append(f"Boot plan (policy: {source}; up to {limits.max_parallel_starts} starts at once{delay})")
    if not plan.entries:
        lines.append("  no guests")
    shutdown = plan.kind is PassKind.SHUTDOWN
    rows = []
    for e in plan.entries:
        row = [e.order, _guest_label(e, many), e.guest.state, " -> ".join(e.actions) + _channels_token(e)]
        if shutdown:
            row.append(f"{e.estimate_seconds:.0f} s" if e.estimate_seconds is not None else "-")
        row += [", ".join(names.get(k, k[1]) for k in e.wait_for) or "-", e.reason]
        rows.append(row)
    headers = ["ORDER", "GUEST", "STATE", "ACTIONS" if shutdown else "ACTION"]
    headers += (["SAVE ENDS"] if shutdown else []) + ["WAITS FOR", "WHY"]
    if rows:
        lines.extend("  " + line for line in _table(headers, rows))
    for e in plan.entries:
        for note in e.notes:
            lines.append(f"  note: {e.guest.name}: {note}")
    for warning in plan.warnings:
        lines.append(f"  warning: {warning}")
    if settings and plan.entries:
        lines.append("Effective settings (value [where it came from]):")
        for e in plan.entries:
            parts = []
            for name, src in e.effective.sources.items():
                parts.append(f"{name}={setting_text(getattr(e.effective.settings, name))} [{src}]")
            lines.append(f"  {_guest_label(e, many)}: " + "  ".join(parts))
    return "\n".join(lines)


def render_result(result: PassResult) -> str:
    """The per-guest summary that ends every pass."""
    title = f"{result.kind} pass{' (dry run: nothing was done)' if result.dry_run else ''}"
    lines = [f"Summary of the {title}, {result.finished - result.started:.1f} s:"]
    rows = []
    for r in result.results:
        mark = _MARKS[r.severity]
        rows.append([r.plan.guest.name, r.action, r.outcome, mark, f"{r.seconds:.1f}", size(r.bytes)])
    if rows:
        lines.extend("  " + line for line in _table(["GUEST", "ACTION", "RESULT", "", "SECONDS", "BYTES"], rows))
    else:
        lines.append("  no guests")
    for r in result.results:
        if r.outcome is Outcome.SKIPPED:
            continue
        for message in r.messages:
            lines.append(f"  {r.plan.guest.name}: {message}")
        for step in r.steps:
            if not step.ok:
                lines.append(f"  {r.plan.guest.name}: {step.action} failed: {step.error}")
    for warning in result.warnings:
        lines.append(f"  warning: {warning}")
    total = len(result.results)
    if result.interrupted:
        left = [r.plan.guest.name for r in result.results if r.outcome is Outcome.INTERRUPTED]
        lines.append(f"the pass was stopped by {result.interrupted}: {len(left)} guests were left as they were"
                     + (": " + ", ".join(left) if left else ""))
    lines.extend(_verdict(result, total))
    return "\n".join(lines)


_MARKS = {Severity.OK: "ok", Severity.DEGRADED: "DEGRADED", Severity.FAILED: "FAILED"}


def _verdict(result: PassResult, total: int) -> list[str]:
    """The summary's last lines: which guests did not get their first choice, which failed; a dry
    run says what would happen, never what happened."""
    would = result.dry_run
    lines = []
    if result.on_builtin_defaults:
        lines.append(f"the policy is broken ({len(result.policy_problems)} problems, above): this pass "
                     f"{'would run' if would else 'ran'} on the built-in defaults, not on the policy")
    failed, degraded = result.failed, result.degraded
    if failed:
        verb = "would fail" if would else "FAILED (they may be in any state)"
        lines.append(f"{len(failed)} of {total} guests {verb}: " + ", ".join(r.plan.guest.name for r in failed))
    if degraded:
        verb = "would be DEGRADED" if would else "are DEGRADED"
        lines.append(f"{len(degraded)} of {total} guests {verb} (not their first choice): "
                     + ", ".join(f"{r.plan.guest.name} ({r.outcome if not would else r.plan.actions[0]} instead of "
                                 f"{r.plan.first_choice})" for r in degraded))
    if not failed and not degraded:
        verb = "would get" if would else "got"
        lines.append(f"all {total} guests {verb} their first choice")
    return lines


def render_status(rows: list[dict]) -> str:
    """``mgsave status``: one line a guest."""
    table = []
    now = time.time()
    for r in rows:
        image = "-"
        if r["saved_image"]:
            age = f", {_age(now - r['image_mtime'])} old" if r.get("image_mtime") else ""
            image = f"yes ({size(r.get('image_bytes'))}{age})"
        last = r.get("last_shutdown") or "-"
        if r.get("last_boot"):
            last = f"{last} / {r['last_boot']}"
        table.append([r["name"], r["state"], image, r["autostart"], last])
    if not table:
        return "no guests"
    return "\n".join(_table(["GUEST", "STATE", "SAVED IMAGE", "AUTOSTART", "LAST SHUTDOWN / BOOT"], table))


def _age(seconds: float) -> str:
    for unit, scale in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.0f} {unit}"
    return f"{seconds:.0f} s"


def render_kept(files, usage, warnings: list[str], *, listing: bool) -> str:
    """The kept images and set-aside records: one line a file for ``mgsave images list``, a
    summary line (and any warning) for ``mgsave status``."""
    share = f", {usage.share:.1f}% of the file system" if usage.share is not None else ""
    summary = f"kept: {usage.files} files, {size(usage.bytes) if usage.bytes else '0 B'}{share}"
    lines = []
    if listing:
        now = time.time()
        rows = [[f.name, f.kind, size(f.bytes), f"{_age(now - f.mtime)} old"] for f in files]
        lines += _table(["NAME", "KIND", "SIZE", "AGE"], rows) if rows else ["nothing kept"]
    elif usage.files:
        summary += " (mgsave images list)"
    return "\n".join([*lines, summary, *(f"warning: {w}" for w in warnings)])
