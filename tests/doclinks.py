"""The relative links of the installed documents, followed through a package's file list.

A file list maps each path (absolute, without a trailing slash) to its symlink's target, or to
None for a file or directory: ``dpkg-deb -c`` of the .deb, or a staged ``make install``.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

# [text](target) where target is no URL, no anchor of the same page and no mail address.
LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)")


def relative_links(markdown: str) -> list[str]:
    """Each relative link target, without its #anchor."""
    return [target.split("#")[0] for target in LINK.findall(markdown)]


def deb_listing(dpkg_deb_c: str) -> dict[str, str | None]:
    """``dpkg-deb -c`` output as a file list."""
    entries: dict[str, str | None] = {}
    for line in dpkg_deb_c.splitlines():
        mode, _owner, _size, _date, _time, rest = line.split(None, 5)
        path, _, target = rest.partition(" -> ") if mode.startswith("l") else (rest, "", "")
        entries["/" + path.removeprefix("./").rstrip("/")] = target or None
    entries.pop("/", None)
    return entries


def tree_listing(root: Path) -> dict[str, str | None]:
    """The files under ``root`` (a DESTDIR) as a file list of absolute paths."""
    entries: dict[str, str | None] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            entries["/" + str(path.relative_to(root))] = os.readlink(path) if path.is_symlink() else None
    return entries


def resolve(path: str, entries: dict[str, str | None]) -> str | None:
    """``path`` with every symlink on the way followed within the list; None when it leads to
    something the list does not hold."""
    todo = [part for part in path.split("/") if part not in ("", ".")]
    done, hops = "/", 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            done = posixpath.dirname(done)
            continue
        current = posixpath.join(done, part)
        if current not in entries:
            return None
        target = entries[current]
        if target is None:
            done = current
            continue
        hops += 1
        if hops > 40:  # a loop
            return None
        if target.startswith("/"):
            done = "/"
        todo = [p for p in target.split("/") if p not in ("", ".")] + todo
    return done


def broken_links(doc: str, markdown: str, entries: dict[str, str | None]) -> list[str]:
    """The relative links of the document installed at ``doc`` that lead to no listed file."""
    return [target for target in relative_links(markdown)
            if resolve(posixpath.join(posixpath.dirname(doc), target), entries) is None]
