"""Whether the state directory itself may be trusted: nobody but root (or mgsave's own user) can
write to it or to any directory above it.

It is root's, but ``--state-dir``, ``$STATE_DIRECTORY`` or a wrong mode can point it somewhere
others can write. Whoever can write there can plant a record that makes the boot pass start
guests the admin stopped, or a save file that root then restores as a guest. What mgsave does
with an insecure state directory is decided by the callers (see ``StateDir.trusted``): it never
reads records or save files from it, but still writes into it, so that no guest is lost at
shutdown because of it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libmgsave.safefiles import UnsafeFile


def insecure_because(path: Path) -> str | None:
    """Why ``path`` (a directory, or where one is to be made) is writable by others, or None.

    Checked: the directory and every directory above it (a writer of a parent can rename it and
    put another in its place), each owned by root or by us and not writable by group or others,
    except a sticky directory such as /tmp (there others cannot rename what is not theirs)."""
    trusted = {0, os.geteuid()}
    current = Path(os.path.realpath(path))
    first = True
    while True:
        try:
            info = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):  # not made yet (or cannot be): its parents decide
            current, first = current.parent, False
            continue
        except OSError as error:
            return f"{current} cannot be checked ({error.strerror})"
        if info.st_uid not in trusted:
            return f"{current} is owned by uid {info.st_uid}"
        writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and (first or not info.st_mode & stat.S_ISVTX):
            return f"{current} is writable by group or others ({stat.filemode(info.st_mode)})"
        if current.parent == current:
            return None
        current, first = current.parent, False


def insecure_subdirectory(path: Path) -> str | None:
    """Why a directory inside the state directory (``images/``...) is unsafe, or None: a real
    directory there must be root's (or ours) and not writable by others. Anything else in its
    place (a file, a symlink) is not read from, and set aside when a save needs the directory."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        return f"{path} cannot be checked ({error.strerror})"
    if not stat.S_ISDIR(info.st_mode):
        return None
    if info.st_uid not in {0, os.geteuid()}:
        return f"{path} is owned by uid {info.st_uid}"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others ({stat.filemode(info.st_mode)})"
    return None


def refuse_unless_ours(info: os.stat_result) -> None:
    """Raise UnsafeFile for a file (the ``fstat`` of what was opened, not a second look) that
    others than root or us could have written: what mgsave keeps for itself in the state
    directory (the last valid policy, the validated policy) is trusted only when it is ours."""
    if info.st_uid not in (0, os.geteuid()) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFile(f"others could have written it (uid {info.st_uid}, {stat.filemode(info.st_mode)})")
