"""What the state directory keeps for the admin to look at: saved images that could not be
resumed or restored (``failed-images/``) and records that could not be trusted, set aside
(``<record>.untrusted-<time>``). mgsave never removes one on its own; ``mgsave images remove``
does, when asked, by the name ``list`` gives.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from libmgsave import jsonout, safefiles, units
from libmgsave.state.records import BOOT_RECORD, SHUTDOWN_RECORD

log = logging.getLogger("mgsave")

FAILED_IMAGES = "failed-images"
_SET_ASIDE = (f"{SHUTDOWN_RECORD}.untrusted-", f"{BOOT_RECORD}.untrusted-")


@dataclass(frozen=True)
class KeptFile:
    name: str  # relative to the state directory: what ``mgsave images remove`` takes
    path: Path
    kind: str  # "failed-image" or "untrusted-record"
    bytes: int
    mtime: float

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "kind": self.kind, "size_bytes": self.bytes,
                "modified": jsonout.timestamp(self.mtime)}


def kept_files(state_dir: Path) -> list[KeptFile]:
    """Every kept file, oldest first. Only regular files count (never followed through a link,
    nor ``failed-images/`` itself when it is one)."""
    found = []
    for name, info in _regular_in(state_dir).items():
        if name.startswith(_SET_ASIDE):
            found.append(KeptFile(name, state_dir / name, "untrusted-record", info.st_size, info.st_mtime))
    for name, info in _regular_in(state_dir, FAILED_IMAGES).items():
        kept = f"{FAILED_IMAGES}/{name}"
        found.append(KeptFile(kept, state_dir / kept, "failed-image", info.st_size, info.st_mtime))
    return sorted(found, key=lambda f: (f.mtime, f.name))


def _regular_in(state_dir: Path, *where: str) -> dict[str, os.stat_result]:
    try:
        with safefiles.directory(state_dir, *where) as fd:
            return safefiles.regular_entries(fd)
    except (OSError, safefiles.UnsafeFile):
        return {}


@dataclass(frozen=True)
class KeptUsage:
    files: int
    bytes: int
    filesystem_bytes: int | None  # the size of the state directory's file system; None: unknown

    @property
    def share(self) -> float | None:
        """Percent of the file system the kept files take."""
        return 100.0 * self.bytes / self.filesystem_bytes if self.filesystem_bytes else None

    def to_dict(self) -> dict:
        return {"files": self.files, "size_bytes": self.bytes, "filesystem_bytes": self.filesystem_bytes,
                "share_percent": self.share}


def kept_usage(state_dir: Path, files: list[KeptFile]) -> KeptUsage:
    try:
        info = os.statvfs(state_dir)
        total = info.f_blocks * info.f_frsize
    except OSError:
        total = None
    return KeptUsage(len(files), sum(f.bytes for f in files), total)


def over_share_warning(usage: KeptUsage, limit: float) -> str | None:
    """The warning when kept files take more than ``limit`` percent of their file system."""
    if usage.share is None or usage.share <= limit:
        return None
    return (f"kept images take {units.size(usage.bytes)}, {usage.share:.1f}% of the state directory's file "
            f"system (more than limits.kept_images_warn_share, {limit:g}%): see 'mgsave images list', remove "
            f"them with 'mgsave images remove NAME...' once looked at")


def remove_kept(state_dir: Path, kept: KeptFile, *, dry_run: bool) -> str | None:
    """Remove one kept file, relative to descriptors of the state directory and of
    ``failed-images/`` opened without following a link, once ``lstat`` there says it is still a
    regular file (whatever was swapped in meanwhile, only a name in those directories can go);
    None when done (or, for a dry run, when it would be), else why not. Logged either way."""
    *where, name = kept.name.split("/")
    try:
        with safefiles.directory(state_dir, *where) as fd:
            if dry_run:
                safefiles.regular_file(fd, name)
            else:
                safefiles.remove_regular(fd, name)
    except safefiles.UnsafeFile as why:
        log.error("did not remove the kept %s %s: %s", kept.kind, kept.path, why)
        return f"{why}: {kept.path}"
    except OSError as error:
        log.error("could not remove the kept %s %s (%s)", kept.kind, kept.path, error.strerror or error)
        return f"{error.strerror or error}: {kept.path}"
    log.info("%s the kept %s %s (%d bytes)", "would remove" if dry_run else "removed", kept.kind, kept.path,
             kept.bytes)
    return None
