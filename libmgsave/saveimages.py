"""Where a guest's saved memory state is kept (libvirt's managed-save images, transient guests'
save files under the state directory), and whether a save file is whole.

Facts about files only: nothing here talks to libvirt, so the planner can use them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libmgsave.safefiles import UnsafeFile, read_head, read_small_file

QEMU_CONF = "/etc/libvirt/qemu.conf"


def save_dir_moved(uri: str, qemu_conf: str = QEMU_CONF) -> bool:
    """True when qemu.conf moves qemu:///system's managed-save images (``save_dir``) away from
    where ``managed_save_dir`` says they are."""
    if managed_save_dir(uri) != "/var/lib/libvirt/qemu/save":
        return False
    # Unreadable (not root): the default is assumed, as for free space.
    return any(line.split("=", 1)[0].strip() == "save_dir" for line in read_qemu_conf(qemu_conf).splitlines()
               if "=" in line and not line.lstrip().startswith("#"))


def read_qemu_conf(path: str | Path = QEMU_CONF) -> str:
    """qemu.conf's text, or "" when it cannot be read: a regular file (through a link, which
    configuration management may make), never blocking, at most 1 MiB."""
    try:
        return read_small_file(path, 1024 * 1024, follow_symlinks=True).decode("utf-8", "replace")
    except (OSError, UnsafeFile):
        return ""


def managed_save_dir(uri: str) -> str | None:
    """Where libvirt keeps managed-save images for a local QEMU connection, else None.

    libvirt does not tell; these are its fixed locations. Used to check free space before
    saving and to keep an image that failed to resume.
    """
    if uri.rstrip("/") in ("qemu:///system", "qemu://system"):
        return "/var/lib/libvirt/qemu/save"
    if uri.rstrip("/") == "qemu:///session":
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        return os.path.join(base, "libvirt", "qemu", "save")
    return None


# libvirt's QEMU save images begin with this mark while being written; it is replaced by the
# real one only once the save has completed.
_QEMU_SAVE_PARTIAL = b"LibvirtQemudPart"
_QEMU_SAVE_MAGIC = b"LibvirtQemudSave"


def saved_image_problem(path: str | None) -> str | None:
    """Why the QEMU save image at ``path`` cannot be resumed, by its header; None when it is a
    complete libvirt save image, or cannot be read here (libvirt decides then).

    Starting the guest would not say: libvirt deletes a partial image and boots the guest fresh,
    and since libvirt 11 it does the same with any header it does not know (9.0 refused those)."""
    if not path:
        return None
    try:
        header = read_head(path, len(_QEMU_SAVE_MAGIC))
    except (OSError, UnsafeFile):
        return None
    if header == _QEMU_SAVE_PARTIAL:
        return "its saved image is incomplete: the save never finished (a power loss or crash during the shutdown pass)"
    if header != _QEMU_SAVE_MAGIC:
        return "its saved image is damaged: it does not begin like a libvirt save image"
    return None


def saved_image_is_partial(path: str | None) -> bool:
    """True when the QEMU save image at ``path`` was never finished (the host lost power or
    libvirtd died during the save). Starting the guest would not fail: libvirt deletes such an
    image and boots the guest fresh, without a word to the caller."""
    if not path:
        return False
    try:
        return read_head(path, len(_QEMU_SAVE_PARTIAL)) == _QEMU_SAVE_PARTIAL
    except (OSError, UnsafeFile):
        return False


# The header's image format field (after the magic: version, data_len, was_running, format, as
# little-endian 32-bit words on x86); 6 is libvirt's "sparse" (QEMU mapped-ram), since 11.2.
_FORMAT_OFFSET = len(_QEMU_SAVE_MAGIC) + 12
_FORMAT_SPARSE = 6


def is_whole_save_image(path: str | None) -> bool:
    """True when ``path`` is a regular file with the header of a completed libvirt save."""
    try:
        return bool(path) and read_head(path, len(_QEMU_SAVE_MAGIC)) == _QEMU_SAVE_MAGIC
    except (OSError, UnsafeFile):
        return False


# libvirt's names of the header's format numbers (virQEMUSaveFormat, in its order)
_FORMAT_NAMES = ("raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse")


def image_format_of(path: str | None) -> str | None:
    """The format a completed save image at ``path`` is in, by its header ("raw", "zstd",
    "sparse"...), or None when it is not one or cannot be read."""
    try:
        header = read_head(path or "", _FORMAT_OFFSET + 4)
    except (OSError, UnsafeFile):
        return None
    if len(header) != _FORMAT_OFFSET + 4 or not header.startswith(_QEMU_SAVE_MAGIC):
        return None
    number = int.from_bytes(header[_FORMAT_OFFSET:], "little")
    return _FORMAT_NAMES[number] if number < len(_FORMAT_NAMES) else None


def is_sparse_image(path: str | None) -> bool:
    """True when the save image at ``path`` is in libvirt's sparse format (its memory can be
    read back with several channels)."""
    return image_format_of(path) == _FORMAT_NAMES[_FORMAT_SPARSE]


def managed_image_path(uri: str, guest_name: str) -> str | None:
    directory = managed_save_dir(uri)
    return None if directory is None else f"{directory}/{guest_name}.save"


def transient_image_path(state_dir: Path, uuid: str) -> Path:
    """The one place a transient guest's save file may be: ``<state>/images/<uuid>.save`` (a
    record naming any other file is untrusted)."""
    return Path(state_dir) / "images" / f"{uuid.lower()}.save"


def save_file_is_complete(path: str | None) -> bool:
    """True when ``path`` is a save file (a regular file, not a symlink) whose save finished."""
    try:
        regular = bool(path) and stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
    return regular and not saved_image_is_partial(path)
