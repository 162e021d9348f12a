"""The save files the state directory holds: transient guests' images, and images kept after a failure."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Collection
from pathlib import Path

from libmgsave import safefiles, units
from libmgsave.errors import HypervisorError
from libmgsave.inventory import GuestInfo
from libmgsave.history import UUID_PATTERN, GuestEntry, Outcome, guest_record_key
from libmgsave.state.kept import KEPT_BESIDE
from libmgsave.state.trust import insecure_subdirectory

log = logging.getLogger("mgsave")


def transient_images_without_record(images: Path, record: dict | None,
                                     read_guest: Callable[[str], GuestInfo | None],
                                     warnings: list[str], *, known: Collection[str] = (),
                                     restore_unrecorded: bool = False) -> list[GuestEntry]:
    """Save files of transient guests under ``images`` that the shutdown record does not name.

    Without a usable record they would never be restored. Only a file named ``<uuid>.save``, a
    regular file (not a symlink), is looked at; it is read back with ``read_guest`` (libvirt
    stores the guest's definition in it; None: no connection could), and it is returned as a
    record-like entry for the boot pass to restore only when the guest it holds has that UUID
    and is one mgsave knows (its key in ``known``: the boot record, the guests libvirt lists),
    or when the admin asked for it (``restore_unrecorded``). Anything else is kept and reported.
    """
    entries = []
    named = {entry.get("image") for entry in (record or {}).get("guests", {}).values()}
    for path in _save_files(images, warnings):
        if str(path) in named:
            continue
        if record is not None and not restore_unrecorded:
            _kept(warnings, f"{path}: a saved transient guest that the shutdown record does not name; kept, "
                            f"not restored (mgsave boot --restore-unrecorded restores it)")
            continue
        guest = read_guest(str(path))
        if guest is None:
            warnings.append(f"{path}: a saved transient guest that no connection can read; kept, not restored")
            continue
        if f"{guest.uuid.lower()}.save" != path.name:
            _kept(warnings, f"{path}: holds the guest {guest.name} of UUID {guest.uuid}, not the one its name "
                            f"says; kept, not restored")
            continue
        if not restore_unrecorded and guest_record_key(*guest.key) not in known:
            _kept(warnings, f"{path}: holds {guest.name}, a guest no record names; kept, not restored "
                            f"(mgsave boot --restore-unrecorded restores it)")
            continue
        _kept(warnings, f"{guest.name}: restoring its saved image {path}, found with no usable record to name it")
        entries.append(GuestEntry.of(
            connection=guest.connection, name=guest.name, uuid=guest.uuid, persistent=False,
            memory_kib=guest.memory_kib, title=guest.title, metadata=dict(guest.metadata),
            outcome=Outcome.SAVED_TO_FILE, image=str(path),
        ))
    return entries


def _save_files(images: Path, warnings: list[str]) -> list[Path]:
    """The files under ``images`` that can be a transient guest's save file: ``<uuid>.save``,
    regular files; anything else there is reported and left alone."""
    try:
        if not stat.S_ISDIR(os.lstat(images).st_mode):
            _kept(warnings, f"{images}: not a directory (a symlink?); nothing in it is restored")
            return []
        names = sorted(os.listdir(images))
    except OSError:
        return []
    files = []
    for name in names:
        path = images / name
        if not name.endswith(".save"):
            continue
        try:
            regular = stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            continue
        if not regular or not UUID_PATTERN.match(name.removesuffix(".save")):
            _kept(warnings, f"{path}: not a transient guest's save file (not a regular file named <uuid>.save); "
                            f"left alone")
            continue
        files.append(path)
    return files


def _kept(warnings: list[str], message: str) -> None:
    log.warning("%s", message)
    warnings.append(message)


def read_with_any(hosts, path: str) -> GuestInfo | None:
    """The guest a save file holds, read through the first of ``hosts`` that can; None (logged)
    when none can."""
    problems = []
    for host in hosts:
        try:
            return host.saved_image_guest(path)
        except HypervisorError as error:
            problems.append(error.message)
    log.error("%s: a saved transient guest that no connection can read; kept, not restored (%s)",
              path, "; ".join(problems) or "no connection")
    return None


def own_directory(path: Path) -> Path:
    """``path``, made if need be, and a real directory (not a symlink to one elsewhere): what
    mgsave moves into it stays in the state directory. Raises OSError otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise OSError(errno.ENOTDIR, "not a directory of its own (a symlink?)", str(path))
    return path


def images_directory(path: Path) -> Path:
    """The directory of transient guests' save files, ready for a save: when something else is
    in its place (a symlink to elsewhere, a file), that is set aside as ``images.untrusted-<time>``
    and a new directory made, so that a save never writes through a link and never fails for it."""
    try:
        return own_directory(path)
    except OSError:
        aside = path.with_name(f"{path.name}.untrusted-{time.strftime('%Y%m%d-%H%M%S')}")
        os.rename(path, aside)
        log.error("%s was not a directory of its own; set aside as %s, and a new one made", path, aside)
        return own_directory(path)


def _directory_of(path: Path):
    """A descriptor of the directory ``path`` is in (``images/`` or ``failed-images/`` of the
    state directory), opened from the state directory without following a link: a directory
    swapped for a link can never make root remove or move a file elsewhere."""
    return safefiles.directory(path.parent.parent, path.parent.name)


def _remove(path: str) -> None:
    """Remove the regular file ``path`` (see ``_directory_of``); raises OSError or UnsafeFile."""
    with _directory_of(Path(path)) as fd:
        safefiles.remove_regular(fd, Path(path).name)


def discard_partial_save(path: str, name: str, why: str) -> None:
    """Remove what a failed save to a file wrote, once the guest is known to still run (so the
    save did not complete); logged either way."""
    try:
        _remove(path)
    except FileNotFoundError:
        return
    except safefiles.UnsafeFile as unsafe:
        log.error("%s: did not remove the partial save file %s: %s", name, path, unsafe)
        return
    except OSError as error:
        log.error("%s: could not remove the partial save file %s (%s)", name, path, error.strerror or error)
        return
    log.info("%s: removed the partial save file %s: its save failed (%s) and the guest still runs", name, path, why)


def keep_failed_image(source: str | None, failed_images: Path, name: str) -> str | None:
    """Keep a managed-save image that failed to resume, before libvirt deletes it; its new path,
    or None (logged) when it could not be kept: the image is then where it was, and the caller
    must not discard it.

    A hard link first, which costs nothing and needs no room: beside the image (``KEPT_BESIDE``,
    on its own file system: under the units the state directory is another mount, and a link
    across mounts fails with EXDEV even on one disk), else in ``failed_images``. A copy into
    ``failed_images`` only when it leaves ``KEEP_FREE_SHARE`` of that file system free: a
    multi-GB copy at boot must not fill /var. Nothing is ever written through a link in either."""
    if source is None or not os.path.isfile(source):
        return None
    stem = f"{safe_stem(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    problems: list[str] = []
    for directory in (Path(source).parent / KEPT_BESIDE, failed_images):
        target = _kept_into(directory, problems, "link", lambda fd: _link_into(source, fd, stem))
        if target is not None:
            log.info("%s: kept the image %s as %s", name, source, target)
            return str(target)
    target = _kept_into(failed_images, problems, "copy", lambda fd: _copy_into(source, fd, stem))
    if target is not None:
        log.info("%s: kept the image %s as %s (a copy: %s)", name, source, target, "; ".join(problems))
        return str(target)
    log.error("%s: could not keep the image %s elsewhere (%s); it is left where it is", name, source,
              "; ".join(problems))
    return None


# The share of its file system a copy of a failed image must leave free.
KEEP_FREE_SHARE = 0.10


def _kept_into(directory: Path, problems: list[str], how: str, keep: Callable[[int], str]) -> Path | None:
    """``keep`` run on a descriptor of ``directory`` (made root's alone, opened without following
    a link); the path of what it kept, or None with why not added to ``problems``."""
    try:
        kept_directory(directory)
        with safefiles.directory(directory.parent, directory.name) as fd:
            return directory / keep(fd)
    except (OSError, safefiles.UnsafeFile) as error:
        problems.append(f"no {how} in {directory}: {getattr(error, 'strerror', None) or error}")
        return None


def _link_into(source: str, dir_fd: int, stem: str) -> str:
    """A hard link to ``source`` in the directory (instant; the data outlives libvirt's unlink)."""
    target = safefiles.free_name(dir_fd, stem)
    os.link(source, target, dst_dir_fd=dir_fd)
    return target


def _copy_into(source: str, dir_fd: int, stem: str) -> str:
    """A copy of ``source`` in the directory, when it leaves ``KEEP_FREE_SHARE`` of that file
    system free (OSError ENOSPC otherwise); never written through a link there."""
    size, fs = os.stat(source).st_size, os.statvfs(dir_fd)
    free, reserve = fs.f_bavail * fs.f_frsize, int(KEEP_FREE_SHARE * fs.f_blocks * fs.f_frsize)
    if size + reserve > free:
        raise OSError(errno.ENOSPC, f"it needs {units.size(size)} and {units.size(reserve)} must stay free, "
                                    f"only {units.size(free)} are")
    target = safefiles.free_name(dir_fd, stem)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with open(source, "rb") as src, open(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target, dir_fd=dir_fd)
        raise
    return target


def kept_directory(path: Path) -> Path:
    """``path`` as a directory to keep images in: made root's alone if need be, and refused
    (OSError) when it is not a directory of its own or others could write to it, since whatever
    is kept there is removed by root when the admin asks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    own_directory(path)
    problem = insecure_subdirectory(path)
    if problem:
        raise OSError(errno.EPERM, f"not safe: {problem}", str(path))
    return path


def safe_stem(name: str) -> str:
    """A guest's name as part of a file name: no directory in it, nothing hidden."""
    return name.replace("/", "_").lstrip(".") or "guest"


def set_aside_failed_file(path: str, failed_images: Path, name: str) -> Path | None:
    """Move a transient guest's save file that failed to restore into ``failed_images``; where
    it went, or None (logged; the file is then where it was) when it could not be moved."""
    source = Path(path)
    try:
        own_directory(failed_images)
        with _directory_of(source) as src_fd, safefiles.directory(failed_images.parent, failed_images.name) as fd:
            target = failed_images / safefiles.free_name(fd, source.name.removesuffix(".save"))
            safefiles.move_regular(src_fd, source.name, fd, target.name)
    except safefiles.UnsafeFile as why:
        log.error("%s: %s: %s", name, source, why)
        return None
    except OSError as error:
        log.error("%s: could not set %s aside into %s (%s); it stays where it is", name, source, failed_images,
                  error.strerror or error)
        return None
    log.info("%s: set %s aside as %s", name, source, target)
    return target


def remove_used_image(path: str, name: str) -> str | None:
    """Remove a transient guest's save file once restored (it is stale the moment the guest runs
    on); None when it is gone, else why it could not be removed (logged as an error)."""
    try:
        _remove(path)
    except FileNotFoundError:
        return None
    except (OSError, safefiles.UnsafeFile) as error:
        reason = f"{getattr(error, 'strerror', None) or error}: {path}"
        log.error("%s: restored, but its used save file could not be removed (%s); the boot record marks it "
                  "used so that it is never restored again", name, reason)
        return reason
    log.info("%s: removed its used save file %s", name, path)
    return None
