"""Free space on a file system: where libvirt keeps managed-save images, or any directory.

Asked of the kernel (statvfs), never of libvirt: the planner weighs the saves against it.
"""

from __future__ import annotations

import os

from libmgsave.saveimages import managed_save_dir


def save_room(uri: str) -> int | None:
    """Free bytes where ``uri`` keeps managed-save images; None when unknown."""
    return free_bytes(managed_save_dir(uri))


def free_bytes(path: str | None) -> int | None:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    while path and not os.path.isdir(path):
        path = os.path.dirname(path) if path != "/" else None
    if not path:
        return None
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
