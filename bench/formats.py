"""Image formats as benchmark contenders: ``mgsave-<format>`` (``mgsave-zstd``, ``mgsave-raw``...)
is mgsave with ``image_format: <format>`` under ``defaults:``; ``--formats`` adds one a format.

Shared by ``compare`` (save-all, resume-all, bytes on disk) and ``hostcycle`` (a whole host).
A contender whose images are not in the format it asked for (libvirt refused it, or cannot be
asked per save: libvirt before 11.2) fails the run: its figures would be another format's.
"""

from __future__ import annotations

import os

from libmgsave.policy import ImageFormat
from libmgsave.saveimages import image_format_of

FORMATS = tuple(str(f) for f in ImageFormat if f is not ImageFormat.LIBVIRT)
PREFIX = "mgsave-"
FILL_KINDS = ("random", "text")  # the rig guest's memory: incompressible, or base64 text


def contender(image_format: str) -> str:
    return PREFIX + image_format


def format_of(name: str) -> str | None:
    """The format a contender asks for (``mgsave-zstd``: zstd), or None for any other."""
    rest = name[len(PREFIX):] if name.startswith(PREFIX) else ""
    return rest if rest in FORMATS else None


def with_formats(contenders: list[str], formats: str) -> list[str]:
    """``contenders`` and one ``mgsave-<format>`` a format of the comma-separated ``formats``
    (``all``: every one); raises SystemExit on a format libvirt does not have."""
    asked = list(FORMATS) if formats.strip() == "all" else [f for f in formats.split(",") if f.strip()]
    unknown = [f for f in asked if f not in FORMATS]
    if unknown:
        raise SystemExit(f"unknown image formats {unknown} (choose from {', '.join(FORMATS)}, or all)")
    return contenders + [contender(f) for f in asked if contender(f) not in contenders]


def policy_lines(name: str) -> str:
    """The lines under ``defaults:`` that make contender ``name`` ask for its format ("" for none)."""
    image_format = format_of(name)
    return f"  image_format: {image_format}\n" if image_format else ""


def bytes_on_disk(path: str | os.PathLike) -> int:
    """The blocks a save image takes (a sparse one is as long as the memory, with holes)."""
    info = os.stat(path)
    return min(info.st_size, info.st_blocks * 512)


def check_format(name: str, image: str | os.PathLike) -> None:
    """Raise when contender ``name`` asked for a format and ``image`` is in another."""
    wanted = format_of(name)
    found = image_format_of(str(image))
    if wanted and found != wanted:
        raise RuntimeError(f"{name}: {image} is in format {found}, not {wanted}: libvirt did not take "
                           f"image_format (libvirt 11.2 or later, and the format's program, are needed)")
