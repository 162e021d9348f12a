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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from libmgsave import jsonout, resuming, safefiles, units
from libmgsave.saveimages import managed_save_dir
from libmgsave.state.records import BOOT_RECORD, SHUTDOWN_RECORD
from libmgsave.state.trust import insecure_subdirectory

log = logging.getLogger("mgsave")

FAILED_IMAGES = "failed-images"
KEPT_BESIDE = "mgsave-failed-images"  # under libvirt's managed-save directory
_SET_ASIDE = (f"{SHUTDOWN_RECORD}.untrusted-", f"{BOOT_RECORD}.untrusted-")


@dataclass(frozen=True)
class KeptFile:
    """An image or file mgsave keeps for the admin to look at or remove."""
    # What ``mgsave images remove`` takes: the path relative to the state directory, or the
    # whole path of an image kept beside libvirt's
    name: str
    path: Path
    kind: str  # "failed-image" or "untrusted-record"
    bytes: int
    mtime: float
    # The trusted directory it is found under (the state directory, or libvirt's save directory),
    # opened as given; every directory below it is opened without following a link.
    base: Path = field(default=Path("."), compare=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "kind": self.kind, "size_bytes": self.bytes,
                "modified": jsonout.timestamp(self.mtime)}


def kept_files(state_dir: Path, beside: Iterable[Path] = ()) -> list[KeptFile]:
    """Every kept file, oldest first: in the state directory, and in ``KEPT_BESIDE`` under each
    of the save directories ``beside`` (see ``kept_beside``). Only regular files count (never
    followed through a link, nor a directory that is one), and nothing from a directory others
    could write to."""
    found = [KeptFile(name, state_dir / name, "untrusted-record", info.st_size, info.st_mtime, state_dir)
             for name, info in _regular_in(state_dir).items() if name.startswith(_SET_ASIDE)]
    for name, info in _regular_in(state_dir, FAILED_IMAGES).items():
        kept = f"{FAILED_IMAGES}/{name}"
        found.append(KeptFile(kept, state_dir / kept, "failed-image", info.st_size, info.st_mtime, state_dir))
    for save_dir in dict.fromkeys(Path(d) for d in beside):
        # and the images a boot pass took aside to resume with channels and left there
        for where in (KEPT_BESIDE, resuming.ASIDE):
            directory = save_dir / where
            problem = insecure_subdirectory(directory)
            if problem:
                log.warning("not listing the images kept in %s: %s", directory, problem)
                continue
            found += [KeptFile(str(directory / name), directory / name, "failed-image", info.st_size,
                               info.st_mtime, save_dir) for name, info in _regular_in(save_dir, where).items()]
    return sorted(found, key=lambda f: (f.mtime, f.name))


def kept_beside(connections: Iterable[str]) -> list[Path]:
    """The managed-save directories where failed images may be kept: the connections' (those
    mgsave knows where libvirt keeps its images for) and always the system daemon's, since a
    pass may have kept one there whatever the connections are now."""
    directories = (managed_save_dir(uri) for uri in ("qemu:///system", *connections))
    return [Path(d) for d in dict.fromkeys(directories) if d]


def _regular_in(base: Path, *where: str) -> dict[str, os.stat_result]:
    try:
        with safefiles.directory(base, *where) as fd:
            return safefiles.regular_entries(fd)
    except (OSError, safefiles.UnsafeFile):
        return {}


@dataclass(frozen=True)
class KeptUsage:
    """What the kept files take, against their file system."""
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
    """Remove one kept file, relative to descriptors of the directories below ``kept.base``
    (``failed-images/``, ``mgsave-failed-images/``) opened without following a link, once
    ``lstat`` there says it is still a regular file (whatever was swapped in meanwhile, only a
    name in those directories can go); None when done (or, for a dry run, when it would be), else
    why not. Logged either way."""
    where = kept.path.relative_to(kept.base).parts
    try:
        with safefiles.directory(kept.base, *where[:-1]) as fd:
            if dry_run:
                safefiles.regular_file(fd, where[-1])
            else:
                safefiles.remove_regular(fd, where[-1])
    except safefiles.UnsafeFile as why:
        log.error("did not remove the kept %s %s: %s", kept.kind, kept.path, why)
        return f"{why}: {kept.path}"
    except OSError as error:
        log.error("could not remove the kept %s %s (%s)", kept.kind, kept.path, error.strerror or error)
        return f"{error.strerror or error}: {kept.path}"
    log.info("%s the kept %s %s (%s)", "would remove" if dry_run else "removed", kept.kind, kept.path,
             units.size(kept.bytes))
    return None
