"""What mgsave keeps for the admin to look at: saved images that could not be resumed or
restored and records that could not be trusted, set aside (``<record>.untrusted-<time>``). mgsave
never removes one on its own; ``mgsave images remove`` does, when asked, by the name ``list`` gives.

A managed-save image that failed to resume is kept beside libvirt's images, in ``KEPT_BESIDE``
under its save directory (a link there is instant and needs no room; the state directory is
another mount under the units), else under the state directory's ``failed-images/``, where a
transient guest's save file that failed to restore goes too.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from libmgsave import jsonout, units
from libmgsave.saveimages import managed_save_dir
from libmgsave.state.records import BOOT_RECORD, SHUTDOWN_RECORD
from libmgsave.state.trust import insecure_subdirectory

log = logging.getLogger("mgsave")

FAILED_IMAGES = "failed-images"
KEPT_BESIDE = "mgsave-failed-images"  # under libvirt's managed-save directory
_SET_ASIDE = (f"{SHUTDOWN_RECORD}.untrusted-", f"{BOOT_RECORD}.untrusted-")


@dataclass(frozen=True)
class KeptFile:
    # What ``mgsave images remove`` takes: the path relative to the state directory, or the
    # whole path of an image kept beside libvirt's
    name: str
    path: Path
    kind: str  # "failed-image" or "untrusted-record"
    bytes: int
    mtime: float

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "kind": self.kind, "size_bytes": self.bytes,
                "modified": jsonout.timestamp(self.mtime)}


def kept_files(state_dir: Path, beside: Iterable[Path] = ()) -> list[KeptFile]:
    """Every kept file, oldest first: in the state directory, and in ``KEPT_BESIDE`` under each
    of the save directories ``beside`` (see ``kept_beside``). Only regular files count (never
    followed through a link), and nothing from a directory others could write to."""
    candidates = [(name, state_dir / name, "untrusted-record") for name in _names(state_dir)
                  if name.startswith(_SET_ASIDE)]
    candidates += [(f"{FAILED_IMAGES}/{name}", state_dir / FAILED_IMAGES / name, "failed-image")
                   for name in _names(state_dir / FAILED_IMAGES)]
    for directory in dict.fromkeys(Path(save_dir) / KEPT_BESIDE for save_dir in beside):
        problem = insecure_subdirectory(directory)
        if problem:
            log.warning("not listing the images kept in %s: %s", directory, problem)
            continue
        candidates += [(str(directory / name), directory / name, "failed-image") for name in _names(directory)]
    found = []
    for name, path, kind in candidates:
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            found.append(KeptFile(name, path, kind, info.st_size, info.st_mtime))
    return sorted(found, key=lambda f: (f.mtime, f.name))


def kept_beside(connections: Iterable[str]) -> list[Path]:
    """The managed-save directories where failed images may be kept: the connections' (those
    mgsave knows where libvirt keeps its images for) and always the system daemon's, since a
    pass may have kept one there whatever the connections are now."""
    directories = (managed_save_dir(uri) for uri in ("qemu:///system", *connections))
    return [Path(d) for d in dict.fromkeys(directories) if d]


def _names(directory: Path) -> list[str]:
    try:
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            return []
        return os.listdir(directory)
    except OSError:
        return []


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


def remove_kept(kept: KeptFile, *, dry_run: bool) -> str | None:
    """Remove one kept file (checked again just before: still a regular file); None when done
    (or, for a dry run, when it would be), else why not. Logged either way."""
    try:
        if not stat.S_ISREG(os.lstat(kept.path).st_mode):
            return f"{kept.path} is no longer a regular file; left alone"
        if not dry_run:
            os.unlink(kept.path)
    except OSError as error:
        log.error("could not remove the kept %s %s (%s)", kept.kind, kept.path, error.strerror or error)
        return f"{error.strerror or error}: {kept.path}"
    log.info("%s the kept %s %s (%d bytes)", "would remove" if dry_run else "removed", kept.kind, kept.path,
             kept.bytes)
    return None
