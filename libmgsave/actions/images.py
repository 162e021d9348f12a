"""``mgsave images``: list the images and records mgsave keeps, and remove them
when the admin asks (by name, or ``--all``). Nothing is ever removed without being asked."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from libmgsave import jsonout, report
from libmgsave.actions import inputs
from libmgsave.context import Context
from libmgsave.errors import ExitCode
from libmgsave.state.kept import kept_beside, kept_files, kept_usage, over_share_warning, remove_kept

log = logging.getLogger("mgsave")


@dataclass(frozen=True)
class ImagesOptions:
    """``images``' own options."""

    remove: bool = False  # remove (else list)
    names: tuple[str, ...] = ()  # remove: the kept files named
    remove_all: bool = False  # remove --all
    dry_run: bool = False  # remove: say what would be removed


@dataclass(frozen=True)
class ImagesResult:
    """What ``mgsave images remove`` could not do."""
    unknown: tuple[str, ...] = ()  # names asked for that are not kept files
    failed: tuple[str, ...] = ()  # kept files that could not be removed
    refused: str | None = None  # why nothing was removed at all (an insecure state directory)

    def exit_code(self) -> int:
        if self.unknown or self.refused:
            return ExitCode.BAD_INPUT
        return ExitCode.GUEST_FAILED if self.failed else ExitCode.OK


def run_images(ctx: Context, options: ImagesOptions) -> ImagesResult:
    policy = inputs.pass_policy(ctx).policy
    files = kept_files(ctx.state.path, kept_beside(policy.connections))
    if options.remove:
        return _remove(ctx, options, files)
    usage = kept_usage(ctx.state.path, files)
    warnings = [w for w in (over_share_warning(usage, policy.limits.kept_images_warn_share),
                            ctx.state.insecure and ctx.state.insecure_warning()) if w]
    ctx.emit(jsonout.document("images", {
        "state_dir": str(ctx.state.path), "kept_files": [f.to_dict() for f in files],
        "kept_usage": usage.to_dict(), "warnings": warnings}),
             report.render_kept(files, usage, warnings, listing=True))
    return ImagesResult()


def _remove(ctx: Context, options: ImagesOptions, files) -> ImagesResult:
    if ctx.state.insecure:
        # Whoever can write there can swap a directory for a link between our look and the
        # removal: root must not be made to remove files elsewhere.
        problem = f"{ctx.state.insecure_warning()}; nothing removed"
        log.error("%s", problem)
        ctx.emit(jsonout.document("images-remove", {"dry_run": options.dry_run, "removed": [], "failed": [],
                                                    "unknown": [], "error": problem}), f"error: {problem}")
        return ImagesResult(refused=problem)
    by_name = {f.name: f for f in files}
    unknown = tuple(n for n in options.names if n not in by_name)
    if unknown or not (options.names or options.remove_all):
        problem = (f"not kept files of {ctx.state.path}: {', '.join(unknown)} (see 'mgsave images list')" if unknown
                   else "name the kept files to remove (see 'mgsave images list'), or pass --all")
        ctx.emit(jsonout.document("images-remove", {"dry_run": options.dry_run, "removed": [], "failed": [],
                                                    "unknown": list(unknown), "error": problem}), f"error: {problem}")
        return ImagesResult(unknown=unknown or ("",))
    chosen = files if options.remove_all else [by_name[n] for n in dict.fromkeys(options.names)]
    removed, failed = [], []
    for kept in chosen:
        problem = remove_kept(kept, dry_run=options.dry_run)
        (failed if problem else removed).append((kept, problem))
    verb = "would remove" if options.dry_run else "removed"
    lines = [f"{verb} {k.name} ({report.size(k.bytes)})" for k, _ in removed]
    lines += [f"could not remove {k.name}: {why}" for k, why in failed]
    ctx.emit(jsonout.document("images-remove", {
        "dry_run": options.dry_run, "removed": [k.to_dict() for k, _ in removed],
        "failed": [dict(k.to_dict(), error=why) for k, why in failed], "unknown": [], "error": None}),
             "\n".join(lines) or "nothing kept")
    return ImagesResult(failed=tuple(k.name for k, _ in failed))
