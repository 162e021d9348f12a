"""The policy file itself: opened safely, refused when someone other than root could write it."""

from __future__ import annotations

import os
import stat

from libmgsave.errors import PolicyError, Problem
from libmgsave.safefiles import FileTooBig, UnsafeFile, read_small_file

MAX_FILE_BYTES = 1024 * 1024  # a real policy is a few KiB
INSECURE_HINT = (
    "make the file and its directory owned by root and not writable by group or others "
    "(chmod go-w), or pass --insecure-policy if you really trust it"
)


def read_policy_file(path: str, *, trust_insecure: bool) -> bytes:
    """The file's bytes; raises PolicyError (line None) when it cannot or must not be used."""

    def refuse(message: str, hint: str | None = None) -> PolicyError:
        return PolicyError([Problem(path, None, None, "", message, hint)])

    try:
        # Through a link (the admin's: its target's directory is checked too), never blocking (a
        # FIFO must not hang the boot pass), regular files only, bounded.
        data = read_small_file(path, MAX_FILE_BYTES, follow_symlinks=True,
                               check=None if trust_insecure else lambda info: _check_ownership(path, info))
    except PolicyError:
        raise
    except FileTooBig:
        raise refuse(f"is larger than {MAX_FILE_BYTES} bytes; a policy is a few KiB") from None
    except UnsafeFile as why:
        if os.path.isdir(path):  # said as before the safe reader, which names it only "not a regular file"
            raise refuse("is a directory, not a policy file") from None
        raise refuse(f"cannot be used: {why}") from None
    except FileNotFoundError:
        raise refuse("no such file", "create it ('mgsave sample-policy > FILE' writes one that means the "
                                     "built-in defaults, every key explained; mgsave-policy(5) describes "
                                     "them) or name another with --policy")
    except IsADirectoryError:
        raise refuse("is a directory, not a policy file")
    except PermissionError as error:
        raise refuse(f"cannot be read: {error.strerror}")
    except (OSError, ValueError) as error:
        raise refuse(f"cannot be read: {getattr(error, 'strerror', None) or error}")
    return data


def _check_ownership(path: str, info: os.stat_result) -> None:
    """Refuse a file that someone other than root or us could have written: it drives root."""
    trusted_uids = {0, os.geteuid()}
    checks = [("the file", path, info)]
    # The directory of the path given and, through a symlink, the one of the real file.
    for directory in dict.fromkeys(os.path.dirname(p) for p in (os.path.abspath(path), os.path.realpath(path))):
        try:
            checks.append(("its directory", directory, os.stat(directory)))
        except OSError as error:
            raise PolicyError([Problem(path, None, None, "", f"cannot check its directory: {error.strerror}")])
    for what, where, where_info in checks:
        if where_info.st_uid not in trusted_uids:
            message = f"refusing an insecure policy: {what} {where} is owned by uid {where_info.st_uid}"
            raise PolicyError([Problem(path, None, None, "", message, INSECURE_HINT)])
        if where_info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            mode = stat.filemode(where_info.st_mode)
            message = f"refusing an insecure policy: {what} {where} is writable by group or others ({mode})"
            raise PolicyError([Problem(path, None, None, "", message, INSECURE_HINT)])
