"""Turning plans, pass results and status into text for people, in 80 columns (``texttable``);
JSON comes from ``to_dict``."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterable, Mapping, Sequence

from libmgsave import texttable, units, untrusted
from libmgsave.history import HostShutdown, ShutdownKind
from libmgsave.outcomes import Outcome, PassResult, Severity
from libmgsave.plan import Plan, PassKind
from libmgsave.policy import copy_stamp
from libmgsave.policyfile.settings import setting_text
from libmgsave.texttable import Column


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    return texttable.render([Column(h) for h in headers], list(rows))


size = units.size  # the one spelling of a size in text: binary units


def _channels_token(entry) -> str:
    """`` (4 channels)`` when the guest's save or restore uses parallel channels, `` (zstd)``
    when its save asks for an image format of its own."""
    if entry.save_channels > 1:
        return f" ({entry.save_channels} channels)"
    image_format = getattr(entry, "image_format", None)
    return f" ({image_format})" if image_format else ""


def render_plan(plan: Plan, *, guests: Sequence[str] = (), verbose: bool = False) -> str:
    """The plan in 80 columns: a header, one line a guest (a connection column only when there
    are several), notes and warnings. With ``verbose``, or for the ``guests`` named, each guest
    also in full: its plan and every setting with the rule (file:line) that set it."""
    many = len({e.guest.connection for e in plan.entries}) > 1
    names = {e.key: e.guest.name for e in plan.entries}
    entries = [e for e in plan.entries if not guests or e.guest.name in guests]
    lines = _plan_header(plan)
    if not entries:
        lines.append("  no guests" if not guests else "  no guest named " + untrusted.message(", ".join(guests)))
    else:
        lines += _plan_table(plan.kind, entries, names, many)
    for e in entries:
        lines += wrapped(f"note: {_name(e.guest.name)}: {note}" for note in e.notes)
        lines += wrapped([f"warning: {_name(e.guest.name)}: {e.will_not_resume}"] if e.will_not_resume else [])
    lines += wrapped(f"warning: {warning}" for warning in plan.warnings)
    if verbose or guests:
        for e in entries:
            lines += [""] + plan_details(plan, e, names)
    return "\n".join(lines)


def _for_kind(shutdown: HostShutdown | None) -> tuple[str, str]:
    """What a shutdown plan or pass was for, and the chains it ran: `` for a reboot``,
    ``on_reboot chains``; nothing when the kind is not known (the plan's warning says so where
    a guest has an on_reboot chain of its own)."""
    if shutdown is None or shutdown.kind is ShutdownKind.UNKNOWN:
        return "", ""
    return f" for a {shutdown.kind}", f"{shutdown.chain} chains"


def _plan_header(plan: Plan) -> list[str]:
    limits = plan.limits
    source = plan.policy_source or "built-in defaults"
    if plan.kind is PassKind.SHUTDOWN:
        # The deadline the plan was made for: --deadline, or what is left of the pass's.
        deadline = limits.shutdown_deadline if plan.deadline is None else plan.deadline
        kind, chains = _for_kind(plan.host_shutdown)
        lines = wrapped([f"Shutdown plan{kind} ({f'{chains}; ' if chains else ''}policy: {source}; deadline "
                         f"{units.seconds(deadline)}; up to {units.plural(limits.max_parallel_saves, 'save')} "
                         f"at once)"], indent="")
        lines += wrapped(f"estimates on {uri} assume {units.rate(rate.bytes_per_second)}: {rate.source}"
                         for uri, rate in sorted((plan.rates or {}).items()))
        return lines
    delay = f"; {units.seconds(limits.start_delay)} between starts" if limits.start_delay else ""
    return wrapped([f"Boot plan (policy: {source}; up to {units.plural(limits.max_parallel_starts, 'start')} "
                    f"at once{delay})"], indent="")


def _plan_table(kind: PassKind, entries, names: Mapping, many: bool) -> list[str]:
    """One line a guest: what it gets, in which order, after whom. The shutdown table has no
    reason column: a shutdown reason is the state and the chain, both shown; the notes say more."""
    shutdown = kind is PassKind.SHUTDOWN
    show_order = any(e.order for e in entries)
    show_waits = any(e.wait_for for e in entries)
    columns = [Column("CONNECTION", shrink=True, middle=True, name=True)] if many else []
    columns += [Column("ORDER", right=True)] if show_order else []
    columns += [Column("GUEST", shrink=True, name=True), Column("STATE"),
                Column("ACTIONS" if shutdown else "ACTION", shrink=True)]
    columns += [Column("SAVE ENDS", right=True)] if shutdown else []
    columns += [Column("WAITS FOR", shrink=True)] if show_waits else []
    columns += [] if shutdown else [Column("WHY", shrink=True)]
    rows = []
    for e in entries:
        row = ([e.guest.connection] if many else []) + ([e.order] if show_order else [])
        row += [e.guest.name, e.state, ",".join(e.actions) + _channels_token(e)]
        row += [_save_ends(e)] if shutdown else []
        row += [", ".join(names.get(k, k[1]) for k in e.wait_for) or "-"] if show_waits else []
        row += [] if shutdown else [e.reason if e.cause is None else e.cause]
        rows.append(row)
    return texttable.render(columns, rows, indent="  ")


def _name(name: str) -> str:
    """A guest's name where it starts a message: escaped and bounded on its own, so that a name
    of thousands of characters does not take the message's whole room."""
    return untrusted.safe(name)


def _save_ends(entry) -> str:
    return units.seconds(entry.estimate_seconds)


def plan_details(plan: Plan, e, names: Mapping) -> list[str]:
    """One guest's plan in full, then its settings: value, and where it came from (file:line)."""
    guest = e.guest
    lines = [untrusted.message(f"{_name(guest.name)} ({guest.connection}, {e.state}, "
                               f"{units.size(guest.memory_bytes)} of memory)")]
    facts = [("actions", " -> ".join(e.actions)), ("why", e.reason), ("order", str(e.order))]
    if e.wait_for:
        facts.append(("waits for", ", ".join(names.get(k, k[1]) for k in e.wait_for)))
    if plan.kind is PassKind.SHUTDOWN and e.estimate_seconds is not None:
        facts.append(("save ends", f"about {units.seconds(e.estimate_seconds)} into the pass"))
    for label, path in (("image", e.managed_image), ("save file", e.image), ("format", e.image_format_why)):
        if path:
            facts.append((label, path))
    lines += wrapped((f"{label + ':':<11}{text}" for label, text in facts), hang=11)
    # Not a table: a setting's origin (a long path) is never cut, it is wrapped.
    lines.append("  settings (value, and where it came from):")
    values = {name: setting_text(getattr(e.effective.settings, name)) for name in e.effective.sources}
    width = max(len(name) for name in values)
    value_width = min(24, max(len(value) for value in values.values()))
    origins = {name: _where(source, plan.policy_source, plan.rule_lines) for name, source in e.effective.sources.items()}
    lines += wrapped((f"{name:<{width}}  {values[name]:<{value_width}}  [{origins[name]}]" for name in values),
                     indent="    ", hang=width + 2)
    return lines


def _where(source: str, policy_file: str | None, rule_lines: Mapping[str, int | None]) -> str:
    """``built-in``, or the rule's label after its file:line (``/etc/mgsave/policy.yaml:12``)."""
    line = rule_lines.get(source)
    if policy_file and line:
        return f"{policy_file}:{line} {source}"
    return source


def wrapped(texts: Iterable[str], *, indent: str = "  ", hang: int = 2) -> list[str]:
    """Each text as lines of at most the table width, the continued lines ``hang`` further in;
    what others wrote in it (names, errors) escaped and bounded (``untrusted``)."""
    width = texttable.width()
    lines = []
    for text in texts:
        lines += textwrap.wrap(untrusted.message(text), width, initial_indent=indent, subsequent_indent=indent + " " * hang,
                               break_on_hyphens=False) or [indent.rstrip()]
    return lines


def render_result(result: PassResult) -> str:
    """The per-guest summary that ends every pass. A dry run's TIME and SIZE are the plan's
    estimates, marked as such: the end of a save, from the pass's start; its image, at most the
    guest's memory."""
    title = f"{result.kind} pass{' (dry run: nothing was done)' if result.dry_run else ''}"
    kind, chains = _for_kind(result.host_shutdown)
    lines = [f"Summary of the {title}{kind}{f' ({chains})' if chains else ''}, "
             f"{units.duration(result.finished - result.started)}:"]
    would = result.dry_run
    columns = [Column("GUEST", shrink=True, name=True), Column("ACTION"), Column("WOULD BE" if would else "RESULT"),
               Column("SEVERITY", colour=_severity_colour), Column("TIME", right=True), Column("SIZE", right=True)]
    rows = [[r.plan.guest.name, r.action, r.outcome if not would else _would(r), _MARKS[r.severity],
             *(_estimates(r) if would else (units.duration(r.seconds), size(r.bytes or None)))]
            for r in result.results]
    lines += texttable.render(columns, rows, indent="  ") if rows else ["  no guests"]
    if would and any(_estimates(r) != ("-", "-") for r in result.results):
        lines += wrapped(["(est.): the plan's estimates: when its save (or migration) would end, from the "
                          "pass's start; a save's image, at most the guest's memory"])
    for r in result.results:
        if r.outcome is not Outcome.SKIPPED:
            lines += wrapped(_guest_lines(r))
    if result.deadline and not result.deadline.get("warning"):  # on a UPS: the runtime it was set on
        lines += wrapped([f"shutdown deadline: {result.deadline['why']}"], indent="")
    lines += wrapped(f"warning: {warning}" for warning in result.warnings)
    total = len(result.results)
    if result.interrupted:
        left = [_name(r.plan.guest.name) for r in result.results if r.outcome is Outcome.INTERRUPTED]
        lines += wrapped([f"the pass was stopped by {result.interrupted}: {units.plural(len(left), 'guest')} "
                          f"{'was left as it was' if len(left) == 1 else 'were left as they were'}"
                          + (": " + ", ".join(left) if left else "")], indent="")
    lines += wrapped(_verdict(result, total), indent="")
    return "\n".join(lines)


_SAVES = ("save", "save-to-file")


def _estimates(r) -> tuple[str, str]:
    """A dry run's TIME and SIZE: the plan's estimated end of the guest's save (or migration) and
    a save's image size (at most its memory), marked; ``-`` where the plan has no estimate."""
    entry = r.plan
    if r.outcome is not Outcome.PLANNED or entry.estimate_seconds is None:
        return "-", "-"
    saving = str(entry.actions[0]) in _SAVES
    return (f"~{units.seconds(entry.estimate_seconds)} (est.)",
            f"~{size(entry.guest.memory_bytes)} (est.)" if saving else "-")


def _guest_lines(r) -> list[str]:
    """What the summary says of one guest besides its row: its messages, and each failed step
    once (not again when a message already says it), without its name twice."""
    name = _name(r.plan.guest.name)
    # A dry run's messages start with the plan's reason, already in the plan printed above.
    messages = [m for m in r.messages if m != r.plan.reason]
    lines = [f"{name}: {_without_name(message, r.plan.guest.name)}" for message in messages]
    for step in r.steps:
        error = _without_name(step.error or "", r.plan.guest.name)
        if not step.ok and not any(error and error in message for message in messages):
            lines.append(f"{name}: {step.action} failed: {error}")
    return lines


def _without_name(text: str, name: str) -> str:
    """``text`` without the guest's name in front of it (libvirt's errors say whose they are):
    the summary's line already starts with it."""
    prefix = f"{name}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _would(r) -> str:
    """A dry run's guest: what the pass would do to it (its plan's first action), not 'planned'."""
    return str(r.plan.actions[0]) if r.outcome is Outcome.PLANNED else str(r.outcome)


def _severity_colour(text: str) -> str | None:
    return {"ok": "green", "DEGRADED": "yellow", "FAILED": "red"}.get(text)


_MARKS = {Severity.OK: "ok", Severity.DEGRADED: "DEGRADED", Severity.FAILED: "FAILED"}


def _verdict(result: PassResult, total: int) -> list[str]:
    """The summary's last lines: which guests did not get their first choice, which failed; a dry
    run says what would happen, never what happened."""
    would = result.dry_run
    lines = []
    if result.on_last_valid_copy and result.policy_problems:
        lines.append(f"the policy is broken ({units.plural(len(result.policy_problems), 'problem')}, above): this pass "
                     f"{'would run' if would else 'ran'} on its last valid copy "
                     f"({copy_stamp(result.policy.copy_saved, result.policy.copy_digest)}), not on the file as it "
                     f"is now")
    elif result.on_builtin_defaults:
        lines.append(f"the policy is broken ({units.plural(len(result.policy_problems), 'problem')}, above): this pass "
                     f"{'would run' if would else 'ran'} on the built-in defaults, not on the policy")
    failed, degraded = result.failed, result.degraded
    if failed:
        verb = "would fail" if would else "FAILED (they may be in any state)"
        lines.append(f"{len(failed)} of {total} guests {verb}: " + ", ".join(_name(r.plan.guest.name) for r in failed))
    if degraded:
        verb = "would be DEGRADED" if would else "are DEGRADED"
        lines.append(f"{len(degraded)} of {total} guests {verb} (not their first choice): "
                     + ", ".join(f"{_name(r.plan.guest.name)} ({r.outcome if not would else r.plan.actions[0]} instead of "
                                 f"{r.plan.first_choice})" for r in degraded))
    if not failed and not degraded:
        verb = "would get" if would else "got"
        lines.append(f"all {total} guests {verb} their first choice" if total != 1 else
                     f"the 1 guest {verb} its first choice")
    return lines


def render_status(rows: Sequence) -> str:
    """``mgsave status``: one line a guest (``actions.status.GuestStatus``), in 80 columns; a
    connection column only when there are several."""
    if not rows:
        return "no guests"
    many = len({r.connection for r in rows}) > 1
    now = time.time()
    columns = ([Column("CONNECTION", shrink=True, middle=True, name=True)] if many else []) + [
        Column("GUEST", shrink=True, name=True), Column("STATE", shrink=True, middle=True), Column("IMAGE"),
        Column("AUTOSTART"),
        Column("LAST SHUTDOWN"), Column("LAST BOOT")]
    table = []
    for r in rows:
        image = "-"
        if r.has_saved_image:
            age = f", {units.seconds(max(0.0, now - r.saved_image_mtime))}" if r.saved_image_mtime else ""
            image = f"{size(r.saved_image_bytes, none='yes')}{age}"
        state = f"{r.state} {r.peer}" if r.peer else r.state
        table.append(([r.connection] if many else []) + [r.name, state, image, r.autostart,
                                                         r.last_shutdown or "-", r.last_boot or "-"])
    return "\n".join(texttable.render(columns, table))


def _age(seconds: float) -> str:
    return units.seconds(max(0.0, seconds))


def render_kept(files, usage, warnings: list[str], *, listing: bool) -> str:
    """The kept images and set-aside records: one line a file for ``mgsave images list``, a
    summary line (and any warning) for ``mgsave status``."""
    share = f", {usage.share:.1f}% of the file system" if usage.share is not None else ""
    summary = f"kept: {units.plural(usage.files, 'file')}, {size(usage.bytes) if usage.bytes else '0 B'}{share}"
    lines = []
    if listing:
        now = time.time()
        rows = [[f.name, f.kind, size(f.bytes), _age(now - f.mtime)] for f in files]
        lines += _table(["NAME", "KIND", "SIZE", "AGE"], rows) if rows else ["nothing kept"]
    elif usage.files:
        summary += " (mgsave images list)"
    return "\n".join([*lines, summary, *(untrusted.message(f"warning: {w}") for w in warnings)])
