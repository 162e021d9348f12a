"""The ``mgsave`` command: argument parsing, the passes' outline, and the one error handler.

Each subcommand is a short function: read the policy, look at the guests, build the plan,
then print it or execute it and print the summary. Errors are mgsave's own exceptions,
turned into a message and an exit code in ``main`` (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from libmgsave import __version__
from libmgsave import interrupt
from libmgsave.errors import ExitCode, HypervisorUnavailable, MgsaveError, PolicyError, Problem
from libmgsave.outcomes import Outcome

log = logging.getLogger("mgsave")

# How long a pass keeps trying to reach a libvirt daemon that does not answer (yet): at boot
# it may still be starting; at shutdown its socket may be restarting.
PASS_CONNECT_RETRY = 60.0
QUERY_CONNECT_RETRY = 0.0

DESCRIPTION = """\
Managed-save every running libvirt guest at host shutdown and bring the guests back at
boot, resumed where they were, as the YAML policy says. The systemd unit mgsave.service
runs 'mgsave boot' at boot and 'mgsave shutdown' at shutdown; run them by hand with
--dry-run to see what they would do.
"""

EPILOG = """\
commands:
  check      validate the policy file (every problem, with file:line:column) and warn about
             conflicts: libvirt autostart flags, libvirt-guests, libvirtd's own shutdown handling
  plan       print the plan for the shutdown and/or boot pass, with each guest's effective
             settings and the policy rule that set each value
  status     every guest: state, saved image (size, age), effective autostart, last results
  shutdown   save (or shut down, or power off, per the policy's fallback chain) every running guest
  boot       start, resume or leave off every guest, per its autostart setting

policy file: --policy FILE, else $MGSAVE_POLICY, else /etc/mgsave/policy.yaml; when that is
missing the built-in defaults apply (save every running guest, resume it at boot).
A broken policy stops 'check' (exit 2) but never a pass: 'shutdown' and 'boot' then log every
problem and go on with the built-in defaults, so no guest is lost to a typo.

exit codes: 0 every guest reached its intended state; 1 at least one did not; 2 bad policy or
usage; 3 another pass holds the lock; 4 the hypervisor could not be reached; 130 or 143 the
pass was stopped by SIGINT or SIGTERM (it finished the steps under way, started nothing new,
and recorded and summarised what it did).
"""


def _global_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("global options")
    g.add_argument("--policy", metavar="FILE", default=argparse.SUPPRESS,
                   help="policy file (default: $MGSAVE_POLICY, else /etc/mgsave/policy.yaml)")
    g.add_argument("--connect", metavar="URI", action="append", default=argparse.SUPPRESS,
                   help="libvirt URI to manage, instead of the policy's connections (repeatable)")
    g.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="where records, the lock and kept images live "
                        "(default: $STATE_DIRECTORY, else /var/lib/mgsave)")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output on stdout; log lines stay on stderr")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging, and a traceback on internal errors")
    g.add_argument("--insecure-policy", action="store_true", default=argparse.SUPPRESS,
                   help="accept a policy file or directory writable by users other than root")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog="mgsave", description=DESCRIPTION, epilog=EPILOG, parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mgsave {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    add("check", "validate the policy and warn about conflicts",
        "Validate the policy file and report every problem at once, each with file:line:column,\n"
        "the key path and a hint (exit 2). Then, if the hypervisor answers, warn about guests whose\n"
        "libvirt autostart flag fights the policy, about 'after' names that match no guest or form a\n"
        "cycle, and about libvirt-guests or libvirtd's own shutdown handling being enabled.")
    p = add("plan", "print what a pass would do",
            "Print the plan that 'mgsave shutdown' or 'mgsave boot' would carry out now, computed the\n"
            "same way: per guest the actions, the order, what it waits for, the estimated end of its\n"
            "save under the deadline, and each effective setting with the rule that set it.")
    p.add_argument("which", nargs="?", choices=["shutdown", "boot"], help="one pass only (default: both)")
    add("status", "show every guest's state, saved image and last results",
        "Show every guest: its state, whether it has a saved image (size, age), its effective\n"
        "autostart, and what the last shutdown and boot passes did to it.")
    for name, text in (
        ("shutdown", "Save every running guest, running each guest's on_shutdown fallback chain\n"
                     "(save -> shutdown -> poweroff by default), saves in parallel up to\n"
                     "limits.max_parallel_saves, within limits.shutdown_deadline. Records which guests\n"
                     "were running in the state directory before touching any."),
        ("boot", "Start or resume guests per their autostart setting: 'always', 'if-running' (only\n"
                 "those running at the last shutdown) or 'never'. Guests already running are left\n"
                 "alone, so running it twice changes nothing."),
    ):
        p = add(name, f"run the {name} pass", text)
        p.add_argument("--dry-run", action="store_true",
                       help="print the plan and the summary the real pass would give; change nothing")
        p.add_argument("--wait", type=float, metavar="SECONDS", default=None,
                       help="how long to wait for another pass to finish (default: the deadline for "
                            "shutdown, 300 for boot)")
        if name == "shutdown":
            p.add_argument("--deadline", type=float, metavar="SECONDS", default=None,
                           help="override limits.shutdown_deadline for this pass")
    return parser


class Context:
    """What every command needs, derived once from the arguments and the environment."""

    def __init__(self, args: argparse.Namespace, environ):
        from libmgsave import policyfile, state

        self.args = args
        self.json = getattr(args, "json", False)
        self.debug = getattr(args, "debug", False)
        self.trust_insecure = getattr(args, "insecure_policy", False)
        self.policy_path, self.policy_explicit = policyfile.policy_path_from(getattr(args, "policy", None), environ)
        self.state_dir = state.state_dir_from(getattr(args, "state_dir", None), environ)
        self.connect = tuple(getattr(args, "connect", None) or ())
        self.warnings: list[str] = []  # problems met on the way (untrusted records...), for the summary
        self.bookkeeping_failed = False  # the lock or a record could not be written: exit 1

    def strict_policy(self):
        """The policy for check/plan-style commands: a missing default file means defaults."""
        from libmgsave import policyfile
        from libmgsave.policy import BUILTIN_POLICY

        if not self.policy_explicit and not os.path.lexists(self.policy_path):
            log.info("no policy file at %s: using the built-in defaults", self.policy_path)
            policy = BUILTIN_POLICY
        else:
            policy = policyfile.load_policy(self.policy_path, trust_insecure=self.trust_insecure)
        return self._with_connections(policy)

    def pass_policy(self) -> tuple:
        """The policy for a pass: never raises; a broken file gives defaults plus problems."""
        from libmgsave import policyfile

        policy, problems = policyfile.load_policy_for_pass(
            self.policy_path, explicit=self.policy_explicit, trust_insecure=self.trust_insecure
        )
        if policy.is_builtin and not problems:
            log.info("no policy file at %s: using the built-in defaults", self.policy_path)
        for problem in problems:
            log.error("policy problem: %s", problem)
        if problems:
            log.error("the policy %s is unusable: carrying on with the built-in safe defaults "
                      "(save every running guest; resume at boot those that were running)", self.policy_path)
        return self._with_connections(policy), problems

    def _with_connections(self, policy):
        return policy.with_connections(self.connect) if self.connect else policy

    def emit(self, data: dict, text: str) -> None:
        if self.json:
            # One string, one write: json.dump would write every token on its own (560,000
            # writes for 10,000 guests' status).
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        else:
            print(text)
        sys.stdout.flush()


def _open_hosts(policy, retry_for: float) -> tuple[dict, list[str]]:
    """Open every connection of the policy; returns the hosts that answered and a warning per
    one that did not. Raises HypervisorUnavailable when none answered."""
    from libmgsave.hypervisor import Host

    hosts, warnings = {}, []
    for uri in policy.connections:
        try:
            hosts[uri] = Host.open(uri, retry_for=retry_for)
        except HypervisorUnavailable as error:
            log.error("cannot reach %s: %s", uri, error.message)
            warnings.append(f"could not reach {uri}: its guests were not handled ({error.message})")
    if not hosts:
        raise HypervisorUnavailable(
            "no libvirt connection could be opened: " + ", ".join(policy.connections),
            hint="is the libvirt daemon running? (systemctl status libvirtd)",
        )
    return hosts, warnings


def _needs_details(policy) -> bool:
    return any(rule.match.title or rule.match.metadata for rule in policy.rules)


def _inventory(hosts: dict, policy) -> list:
    details = _needs_details(policy)
    guests = []
    for host in hosts.values():
        guests.extend(host.guests(with_details=details))
    return guests


def _problems_dict(problems: list[Problem]) -> list[dict]:
    return [p.to_dict() for p in problems]


# --- commands -------------------------------------------------------------------------------


def cmd_check(ctx: Context) -> int:
    from libmgsave import conflicts
    from libmgsave.plan import plan_boot, plan_shutdown

    try:
        policy = ctx.strict_policy()
    except PolicyError as error:
        if ctx.json:
            ctx.emit({"ok": False, "policy": ctx.policy_path, "problems": _problems_dict(error.problems),
                      "warnings": []}, "")
        else:
            for problem in error.problems:
                print(problem, file=sys.stderr)
            noun = "problem" if len(error.problems) == 1 else "problems"
            print(f"{ctx.policy_path}: {len(error.problems)} {noun}; no change was made", file=sys.stderr)
        return ExitCode.BAD_INPUT
    warnings = conflicts.host_conflicts()
    layout = conflicts.daemon_layout()
    try:
        hosts, unreachable = _open_hosts(policy, QUERY_CONNECT_RETRY)
    except HypervisorUnavailable as error:
        hosts, unreachable = {}, [f"could not look at the guests: {error.message}"]
    warnings.extend(unreachable)
    if hosts:
        guests = _inventory(hosts, policy)
        warnings.extend(conflicts.guest_conflicts(policy, guests))
        seen = set()
        for plan in (plan_shutdown(guests, policy, state_dir=ctx.state_dir), plan_boot(guests, policy, None)):
            for warning in plan.warnings:
                if warning not in seen and not warning.startswith("no usable shutdown record"):
                    seen.add(warning)
                    warnings.append(warning)
    source = policy.source or f"built-in defaults (no file at {ctx.policy_path})"
    text = [f"{source}: the policy is valid", f"libvirt daemons: {layout}"] + [f"warning: {w}" for w in warnings]
    ctx.emit({"ok": True, "policy": policy.source, "problems": [], "warnings": warnings,
              "daemon_layout": layout.kind}, "\n".join(text))
    return ExitCode.OK


def cmd_plan(ctx: Context) -> int:
    from libmgsave import report

    policy, problems = ctx.pass_policy()
    hosts, warnings = _open_hosts(policy, QUERY_CONNECT_RETRY)
    guests = _inventory(hosts, policy)
    which = [ctx.args.which] if ctx.args.which else ["shutdown", "boot"]
    plans = [_make_plan(kind, guests, policy, ctx, hosts=hosts) for kind in which]
    warnings += ctx.warnings
    # Only the form asked for: each costs as much as the plan itself with thousands of guests.
    data, text = {}, ""
    if ctx.json:
        data = {"policy_problems": _problems_dict(problems), "warnings": warnings,
                "plans": [p.to_dict() for p in plans]}
    else:
        text = "\n\n".join(report.render_plan(p) for p in plans)
        if warnings:
            text += "\n" + "\n".join(f"warning: {w}" for w in warnings)
    ctx.emit(data, text)
    return ExitCode.OK


def _make_plan(kind: str, guests, policy, ctx: Context, deadline: float | None = None, hosts: dict | None = None):
    from libmgsave import plan as planning
    from libmgsave import state

    if kind == "shutdown":
        previous = _read_record(ctx.state_dir / state.SHUTDOWN_RECORD, "shutdown", quiet=True)
        throughput = previous.get("measured_throughput") if previous else None
        return planning.plan_shutdown(guests, policy, state_dir=ctx.state_dir, throughput=throughput,
                                      deadline=deadline, room=_room(policy, ctx.state_dir))
    record = _read_record(ctx.state_dir / state.SHUTDOWN_RECORD, "shutdown", warnings=ctx.warnings)
    recovered = _transient_images_without_record(ctx, record, hosts or {})
    boot = _read_record(ctx.state_dir / state.BOOT_RECORD, "boot", quiet=True)
    booted_since = bool(record and boot and boot["started"] > record["started"])
    return planning.plan_boot(guests, policy, record, recovered, booted_since=booted_since)


def _transient_images_without_record(ctx: Context, record: dict | None, hosts: dict) -> list[dict]:
    """Save files of transient guests under ``images/`` that the shutdown record does not name.

    Without a usable record they would never be restored: each file is read back through the
    connections (libvirt stores the guest's definition in it) and returned as a record-like
    entry, so the boot pass restores it. With a record, a file it does not name is only reported.
    """
    from libmgsave.errors import HypervisorError

    images = ctx.state_dir / "images"
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
            ctx.warnings.append(message)
            continue
        guest, problems = None, []
        for host in hosts.values():
            try:
                guest = host.saved_image_guest(str(path))
                break
            except HypervisorError as error:
                problems.append(error.message)
        if guest is None:
            message = f"{path}: a saved transient guest that no connection can read; kept, not restored"
            log.error("%s (%s)", message, "; ".join(problems) or "no connection")
            ctx.warnings.append(message)
            continue
        message = f"{guest.name}: restoring its saved image {path}, found with no usable record to name it"
        log.warning("%s", message)
        ctx.warnings.append(message)
        entries.append({
            "connection": guest.connection, "name": guest.name, "uuid": guest.uuid, "persistent": False,
            "memory_kib": guest.memory_kib, "title": guest.title, "metadata": dict(guest.metadata),
            "outcome": Outcome.SAVED_TO_FILE, "image": str(path),
        })
    return entries


def _room(policy, state_dir: Path) -> dict:
    from libmgsave.hypervisor import managed_save_dir
    from libmgsave.plan import FILES_ROOM

    def free(path: str | None) -> int | None:
        while path and not os.path.isdir(path):
            path = os.path.dirname(path) if path != "/" else None
        if not path:
            return None
        try:
            st = os.statvfs(path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    room = {uri: free(managed_save_dir(uri)) for uri in policy.connections}
    room[FILES_ROOM] = free(str(state_dir))
    return room


def _read_record(path: Path, kind: str, quiet: bool = False, warnings: list[str] | None = None) -> dict | None:
    """The record, or None when there is none or it cannot be trusted (logged as an error and,
    given ``warnings``, added to them for the summary)."""
    from libmgsave import state

    try:
        return state.read_record(path, kind)
    except state.RecordError as error:
        if not quiet:
            log.error("ignoring the %s record: %s", kind, error)
        if warnings is not None:
            warnings.append(f"ignoring the {kind} record: {error}")
        return None


def _set_aside_untrusted(path: Path, kind: str, ctx: Context) -> None:
    """Before a pass replaces the record at ``path``: a record that cannot be trusted is renamed
    to ``<name>.untrusted-<time>`` and kept for inspection, never silently overwritten."""
    from libmgsave import state

    try:
        state.read_record(path, kind)
        return
    except state.RecordError as error:
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
        ctx.warnings.append(f"ignoring the {kind} record: {problem}; could not keep it aside ({error.strerror})")
        return
    log.error("ignoring the %s record: %s; kept as %s", kind, problem, target)
    ctx.warnings.append(f"ignoring the {kind} record: {problem}; kept as {target}")


def cmd_status(ctx: Context) -> int:
    from libmgsave import report, state
    from libmgsave.hypervisor import managed_image_path
    from libmgsave.matching import resolve

    policy, problems = ctx.pass_policy()
    hosts, warnings = _open_hosts(policy, QUERY_CONNECT_RETRY)
    guests = _inventory(hosts, policy)
    shutdown_record = _read_record(ctx.state_dir / state.SHUTDOWN_RECORD, "shutdown") or {}
    boot_record = _read_record(ctx.state_dir / state.BOOT_RECORD, "boot") or {}
    rows = []
    for guest in guests:
        key = state.guest_record_key(*guest.key)
        image = managed_image_path(guest.connection, guest.name) if guest.has_managed_save else None
        image_stat = None
        if image:
            try:
                image_stat = os.stat(image)
            except OSError:
                pass
        rows.append({
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
            "last_shutdown": shutdown_record.get("guests", {}).get(key, {}).get("outcome"),
            "last_boot": boot_record.get("guests", {}).get(key, {}).get("outcome"),
        })
    data = {"policy": policy.source, "policy_problems": _problems_dict(problems), "warnings": warnings,
            "state_dir": str(ctx.state_dir), "guests": rows}
    text = "" if ctx.json else report.render_status(rows)
    if warnings and not ctx.json:
        text += "\n" + "\n".join(f"warning: {w}" for w in warnings)
    ctx.emit(data, text)
    return ExitCode.OK


def cmd_pass(ctx: Context) -> int:
    """``mgsave shutdown`` and ``mgsave boot``: lock, plan, execute, record, summarise.

    A pass asked to stop (SIGTERM, SIGINT; see ``interrupt``) still records and summarises
    what it did, and exits 128 + the signal's number."""

    kind = ctx.args.command
    dry_run = ctx.args.dry_run
    try:
        return _pass(ctx, kind, dry_run)
    except interrupt.Interrupted:
        # Stopped before the first guest was looked at (waiting for the lock or the daemon).
        log.warning("%s pass stopped (%s) before it handled any guest: nothing was done", kind,
                    interrupt.signal_received().name)
        notify_failure(kind, f"stopped by {interrupt.signal_received().name} before any guest was handled")
        return interrupt.exit_code()


def _pass(ctx: Context, kind: str, dry_run: bool) -> int:
    from libmgsave import journal, lock, notify, report

    policy, problems = ctx.pass_policy()
    ctx.policy = policy
    deadline = getattr(ctx.args, "deadline", None) or policy.limits.shutdown_deadline
    wait = ctx.args.wait if ctx.args.wait is not None else (deadline if kind == "shutdown" else 300.0)
    started = time.time()
    deadline_at = time.monotonic() + deadline
    log.info("%s pass%s begins (mgsave %s)", kind, " (dry run)" if dry_run else "", __version__,
             extra={"MESSAGE_ID": journal.PASS_START, "MGSAVE_PASS": kind})
    notify.status(f"{kind} pass: starting")
    if kind == "shutdown" and not dry_run:
        # The unit's TimeoutStopSec fits the default deadline; a policy may give a longer one.
        notify.extend_timeout(deadline + 60)
    holder = lock.pass_lock(ctx.state_dir, f"mgsave {kind}", wait=wait) if not dry_run else _no_lock()
    with holder as locked:
        if not locked:
            ctx.bookkeeping_failed = True
            ctx.warnings.append(f"ran without the pass lock: it could not be taken in {ctx.state_dir}")
        hosts, warnings = _open_hosts(policy, min(PASS_CONNECT_RETRY, deadline / 4))
        warnings = [str(p) for p in problems] + warnings
        from libmgsave.execute import Connections
        from libmgsave.outcomes import PassResult

        connections = Connections(hosts, give_up_at=deadline_at)
        guests = _inventory(hosts, policy)
        the_plan = _make_plan(kind, guests, policy, ctx, hosts=hosts,
                              deadline=max(0.0, deadline_at - time.monotonic()) if kind == "shutdown" else None)
        for warning in the_plan.warnings:
            log.warning("%s", warning)
        if not ctx.json:
            print(report.render_plan(the_plan, settings=False))
            sys.stdout.flush()
        results = (_run_shutdown if kind == "shutdown" else _run_boot)(the_plan, connections, ctx, dry_run,
                                                                      deadline_at)
        stopped_by = interrupt.signal_received()
        result = PassResult(kind=the_plan.kind, dry_run=dry_run, started=started, finished=time.time(),
                            results=results, warnings=warnings + ctx.warnings + list(the_plan.warnings),
                            interrupted=stopped_by.name if stopped_by else None,
                            unreachable=tuple(uri for uri in policy.connections if uri not in hosts),
                            bookkeeping_failed=ctx.bookkeeping_failed)
    failed = result.failed
    log.log(logging.ERROR if failed else logging.INFO,
            "%s pass%s ends: %d guests, %d failed, %.1f s", kind, " (dry run)" if dry_run else "",
            len(result.results), len(failed), result.finished - result.started,
            extra={"MESSAGE_ID": journal.PASS_END, "MGSAVE_PASS": kind})
    notify.status(f"{kind} pass: done, {len(result.results) - len(failed)}/{len(result.results)} guests ok")
    if ctx.json:
        ctx.emit(result.to_dict(), "")
    else:
        ctx.emit({}, report.render_result(result))
    if result.interrupted:
        return interrupt.exit_code()
    return ExitCode.OK if result.complete else ExitCode.GUEST_FAILED


class _no_lock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _run_shutdown(the_plan, connections, ctx: Context, dry_run: bool, deadline_at: float) -> list:
    from libmgsave import state
    from libmgsave.execute import ShutdownPass

    writer = None
    if not dry_run:
        writer = state.RecordWriter.begin(ctx.state_dir / state.SHUTDOWN_RECORD, "shutdown",
                                          _shutdown_guest_entries(the_plan, ctx))
    results = ShutdownPass(the_plan, connections, record=writer, deadline_at=deadline_at, dry_run=dry_run).run()
    if not dry_run:
        results = _late_guests(results, connections, ctx, writer, deadline_at)
    if writer:
        stopped_by = interrupt.signal_received()
        writer.finish(measured_throughput=_throughput(results), ok=all(r.ok for r in results),
                      interrupted=stopped_by.name if stopped_by else None)
        if writer.error:
            ctx.bookkeeping_failed = True
            ctx.warnings.append(
                f"the shutdown record {writer.path} could not be written ({writer.error}): the next boot "
                f"pass will go by the guests' saved images alone"
            )
    return results


def _shutdown_guest_entries(the_plan, ctx: Context) -> dict:
    """The record's guest list: every guest running now, plus every guest an earlier, unfinished
    or repeated shutdown pass of this same host cycle already recorded (so a pass killed half-way
    and run again still knows which guests were running)."""
    from libmgsave import state

    entries = {}
    _set_aside_untrusted(ctx.state_dir / state.SHUTDOWN_RECORD, "shutdown", ctx)
    previous = _read_record(ctx.state_dir / state.SHUTDOWN_RECORD, "shutdown", quiet=True)
    boot = _read_record(ctx.state_dir / state.BOOT_RECORD, "boot", quiet=True)
    if previous and (boot is None or boot.get("started", 0) < previous.get("started", 0)):
        entries.update(previous["guests"])
        log.info("continuing the shutdown record of %s (no boot since)",
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(previous.get("started", 0))))
        _settle_interrupted(entries, the_plan)
    elif previous and boot and boot.get("interrupted"):
        entries.update(_not_reached_by_boot_pass(previous, boot))
    for entry in the_plan.active:
        entries[state.guest_record_key(*entry.guest.key)] = _record_entry(entry)
    return entries


def _not_reached_by_boot_pass(previous: dict, boot: dict) -> dict:
    """The entries of the shutdown record before an interrupted boot pass (a shutdown came while
    it ran) for the guests that pass never started: they are still saved, so they were running
    as far as the next boot pass is concerned. Without this, an 'if-running' guest the stopped
    pass did not reach would stay off for good at the next boot, its saved state unused."""

    carried = {key: entry for key, entry in previous["guests"].items()
               if boot["guests"].get(key, {}).get("outcome") == Outcome.INTERRUPTED}
    for entry in carried.values():
        log.info("%s: carried over from the shutdown record of %s: the boot pass was stopped (%s) before it "
                 "reached it", entry.get("name"), time.strftime("%Y-%m-%d %H:%M:%S",
                                                             time.localtime(previous.get("started", 0))),
                 boot["interrupted"])
    return carried


def _record_entry(entry) -> dict:
    """A guest's entry in the shutdown record, before anything is done to it."""

    g = entry.guest
    return {
        "connection": g.connection, "name": g.name, "uuid": g.uuid, "persistent": g.persistent,
        "state": str(g.state), "memory_kib": g.memory_kib, "title": g.title, "metadata": dict(g.metadata),
        "outcome": Outcome.PENDING, "image": entry.image, "planned": [str(a) for a in entry.actions],
    }


def _settle_interrupted(entries: dict, the_plan) -> None:
    """Entries an interrupted pass left 'pending' whose guest is now off with a complete saved
    state: libvirt finished the save after that pass died. Record them as saved."""
    from libmgsave import state
    from libmgsave.hypervisor import saved_image_is_partial

    now = {state.guest_record_key(*e.guest.key): e.guest for e in the_plan.entries}
    for key, entry in entries.items():
        if entry.get("outcome") != Outcome.PENDING:
            continue
        guest = now.get(key)
        if guest is not None and not guest.state.is_active and guest.has_managed_save:
            outcome = Outcome.SAVED
        elif guest is None and entry.get("image") and os.path.isfile(entry["image"]) \
                and not saved_image_is_partial(entry["image"]):
            outcome = Outcome.SAVED_TO_FILE
        else:
            continue
        entries[key] = dict(entry, outcome=outcome, note="its save, begun by an interrupted pass, completed")
        log.info("%s: found saved by the interrupted pass", entry.get("name"))


def _late_guests(results: list, connections, ctx: Context, writer, deadline_at: float) -> list:
    """Guests started by someone else while the pass ran would be left running: look again once
    the plan is done, and put each one found running through its chain too (two rounds at most)."""
    from libmgsave import journal, state
    from libmgsave.errors import HypervisorError
    from libmgsave.execute import ShutdownPass
    from libmgsave.plan import DEADLINE_RESERVE

    for _round in range(2):
        remaining = deadline_at - time.monotonic()
        if remaining <= DEADLINE_RESERVE or interrupt.requested():
            break
        given_up = {r.plan.key for r in results if r.outcome == Outcome.FAILED}  # every step failed: not again
        late = []
        for uri in connections.uris():
            try:
                late += [g for g in connections.host(uri).guests(with_details=_needs_details(ctx.policy))
                         if g.state.is_active and g.key not in given_up]
            except HypervisorError as error:
                log.warning("could not look for guests started during the pass on %s: %s", uri, error.message)
        if not late:
            break
        plan = _make_plan("shutdown", late, ctx.policy, ctx, deadline=remaining)
        for entry in plan.active:
            log.warning("%s: started by someone else during the pass; handling it now", entry.guest.name,
                        extra=journal.guest_fields(entry.guest, result="late"))
            if writer:
                writer.update_guest(state.guest_record_key(*entry.guest.key), **_record_entry(entry))
        more = ShutdownPass(plan, connections, record=writer, deadline_at=deadline_at).run()
        index = {r.plan.key: i for i, r in enumerate(results)}
        for r in more:
            if r.outcome is Outcome.SKIPPED:
                continue
            r.messages.insert(0, "started by someone else during the pass: handled after the others")
            if r.plan.key in index:  # stopped by this pass, then started again
                results[index[r.plan.key]] = r
            else:
                results.append(r)
    return results


def _throughput(results) -> float | None:
    """This pass's aggregate save rate, for the next pass's estimates, in the planner's unit:
    bytes of guest memory saved per second (the planner estimates a save from the guest's
    memory size; the image is smaller, as pages never touched are not written, so a rate of
    image bytes would make the next estimates too long by that ratio, about 1.4 on the
    benchmark's guests; see docs/PERFORMANCE.md)."""
    saves = [(r.plan.guest.memory_bytes, s) for r in results for s in r.steps
             if s.ok and str(s.action).startswith("save")]
    if not saves:
        return None
    span = max(s.finished for _m, s in saves) - min(s.started for _m, s in saves)
    memory = sum(m for m, _s in saves)
    return memory / span if span > 0 and memory > 0 else None


def _run_boot(the_plan, connections, ctx: Context, dry_run: bool, _deadline_at: float) -> list:
    from libmgsave import state
    from libmgsave.execute import BootPass

    started = time.time()
    results = BootPass(the_plan, connections, state_dir=ctx.state_dir, dry_run=dry_run).run()
    if not dry_run:
        _set_aside_untrusted(ctx.state_dir / state.BOOT_RECORD, "boot", ctx)
        path = ctx.state_dir / state.BOOT_RECORD
        try:
            state.write_json_atomic(path, {
                "format": state.RECORD_FORMAT, "kind": "boot", "version": state.RECORD_VERSION,
                "mgsave_version": __version__, "started": started,
                "finished": time.time(),
                # A boot pass stopped early (a shutdown while it ran): the next shutdown pass
                # carries over the record entries of the guests it did not reach.
                "interrupted": stopped.name if (stopped := interrupt.signal_received()) else None,
                "guests": {state.guest_record_key(*r.plan.key): {
                    "connection": r.plan.guest.connection, "name": r.plan.guest.name, "uuid": r.plan.guest.uuid,
                    "outcome": r.outcome, "ok": r.ok, "messages": r.messages} for r in results},
            })
        except OSError as error:
            reason = f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
            log.error("cannot write the boot record %s (%s)", path, reason)
            ctx.bookkeeping_failed = True
            ctx.warnings.append(f"the boot record {path} could not be written ({reason})")
    return results


def notify_failure(command: str, message: str) -> None:
    """Leave ``systemctl status mgsave`` saying why a pass stopped, not "starting"."""
    if command in ("shutdown", "boot"):
        from libmgsave import notify

        notify.status(f"{command} pass failed: {message}")


COMMANDS = {"check": cmd_check, "plan": cmd_plan, "status": cmd_status, "shutdown": cmd_pass, "boot": cmd_pass}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from libmgsave import journal

    journal.setup_logging(debug=getattr(args, "debug", False))
    if args.command in ("shutdown", "boot"):
        interrupt.install()
    try:
        ctx = Context(args, os.environ)
        return int(COMMANDS[args.command](ctx))
    except MgsaveError as error:
        notify_failure(args.command, error.message)
        log.error("%s", error.message)
        if error.hint:
            log.error("hint: %s", error.hint)
        return int(error.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception:
        if getattr(args, "debug", False):
            raise
        log.exception("internal error (please report it; --debug shows more)")
        return int(ExitCode.INTERNAL)
