"""The upsd user's name and password, from a file only root can read (never from the policy).

The file has two lines, ``username = NAME`` and ``password = PASSWORD`` (blank lines and lines
starting with ``#`` are ignored). It is read the way mgsave reads every file someone else may
have put something in (``safefiles``): never through a symbolic link, never blocking, a regular
file of a few KiB at most; and only when it is owned by root (or the user running mgsave) and
neither group nor others can read or write it, since a password others could read is no secret.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from libmgsave.errors import MgsaveError
from libmgsave.safefiles import UnsafeFile, read_small_file

MAX_BYTES = 4096
KEYS = ("username", "password")


class CredentialsError(MgsaveError):
    """The file cannot or must not be used; the message says why (the end of a sentence about
    the file), ``hint`` what to do."""


@dataclass(frozen=True)
class Credentials:
    """The UPS's user and password, from the root-only file."""
    username: str
    password: str = field(repr=False)


def read_credentials(path: str) -> Credentials:
    """The credentials in ``path``. Raises CredentialsError."""
    try:
        data = read_small_file(path, MAX_BYTES, check=_check_owner_and_mode)
    except CredentialsError:
        raise
    except FileNotFoundError:
        raise CredentialsError("does not exist", "create it: 'username = NAME' and 'password = PASSWORD', "
                                                 "then chmod 600") from None
    except UnsafeFile as why:
        raise CredentialsError(f"cannot be used: {why}") from None
    except OSError as error:
        raise CredentialsError(f"cannot be read: {error.strerror or error}") from None
    return parse_credentials(data)


def _check_owner_and_mode(info: os.stat_result) -> None:
    if info.st_uid not in {0, os.geteuid()}:
        raise CredentialsError(f"is owned by uid {info.st_uid}, not root", "chown root: it")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(f"can be read or written by group or others ({stat.filemode(info.st_mode)})",
                               "chmod 600 it")


def parse_credentials(data: bytes) -> Credentials:
    """``username = ...`` and ``password = ...``, each once. Raises CredentialsError naming the line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialsError("is not UTF-8 text") from None
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, equals, value = (part.strip() for part in line.partition("="))
        if not equals or key not in KEYS:
            raise CredentialsError(f"line {number} is not 'username = NAME' or 'password = PASSWORD'")
        if key in found:
            raise CredentialsError(f"line {number} gives the {key} a second time")
        if not value or not value.isprintable():
            raise CredentialsError(f"line {number}: the {key} is empty or holds a control character")
        found[key] = value
    missing = [key for key in KEYS if key not in found]
    if missing:
        raise CredentialsError(f"has no {' and no '.join(missing)}", "add 'username = NAME' and 'password = PASSWORD'")
    return Credentials(found["username"], found["password"])
