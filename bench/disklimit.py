"""The physical limit of a save and of a resume, measured in the same run as they are.

A save cannot be faster than the file system holding the images can write them durably, nor a
resume faster than it can read them from a cold cache. ``measure`` writes, on that file system
(in the images' own directory), as many bytes as the images took, and reads them back:

- write: ``dd if=/dev/zero bs=4M conv=fdatasync``, timed until dd has flushed the file: the
  path a save takes (buffered writes through the page cache, libvirt's default, then mgsave's
  ``fdatasync`` of the image before it counts as saved), not ``oflag=direct``, which measures
  another path (and which tmpfs refuses);
- read: the file dropped from the page cache (``posix_fadvise(DONTNEED)`` after a flush, as the
  benchmarks drop the images before a resume, as after a reboot), then ``dd of=/dev/null bs=4M``,
  the buffered read with the kernel's read-ahead that restoring an image does.

dd, not fio: it is in coreutils, on every Debian host and in the Debian 13 root the benchmarks
also run in, so the figure is measured the same way on both without adding a package (fio is
not installed by scripts/setup); one sequential stream of big blocks is what fio would be asked
for here anyway. Zeros are written as they are on ext4 and XFS; on a file system that compresses
(btrfs with ``compress``, ZFS) they would be cheaper than images, so the file system's type is
reported beside the figure.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import median, table

BLOCK = 4 << 20
PROBE = ".mgsave-bench-disk-limit"
COMPRESSING = ("btrfs", "zfs")


@dataclass(frozen=True)
class DiskLimit:
    """One measurement: bytes written and read back, and the seconds each took."""

    nbytes: int
    write_s: float
    read_s: float
    fs_type: str

    @property
    def write_bps(self) -> float:
        return self.nbytes / self.write_s

    @property
    def read_bps(self) -> float:
        return self.nbytes / self.read_s

    def to_dict(self) -> dict:
        return {"bytes": self.nbytes, "write_seconds": self.write_s, "read_seconds": self.read_s,
                "write_bytes_per_second": self.write_bps, "read_bytes_per_second": self.read_bps,
                "fs_type": self.fs_type}


def drop_from_cache(path: Path | str) -> None:
    """Flush ``path`` and drop it from the page cache (only that file: the rest of the cache
    stays), as a host that rebooted has it only on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fs_type(directory: Path | str) -> str:
    result = subprocess.run(["stat", "-f", "-c", "%T", str(directory)], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def measure(directory: Path | str, nbytes: int) -> DiskLimit:
    """Write ``nbytes`` (rounded up to 4 MiB blocks) durably into ``directory`` with dd, drop
    them from the cache, read them back; the file is removed after. Raises RuntimeError when
    the file system has no room for them or dd fails."""
    directory = Path(directory)
    count = max(1, -(-nbytes // BLOCK))
    free = os.statvfs(directory)
    if free.f_bavail * free.f_frsize < count * BLOCK + (1 << 30):
        raise RuntimeError(f"{directory}: no room for {count * BLOCK / 1e6:.0f} MB to measure the disk "
                           f"(and 1 GiB to spare)")
    path = directory / PROBE
    try:
        write_s = _dd(["if=/dev/zero", f"of={path}", f"bs={BLOCK}", f"count={count}", "conv=fdatasync"])
        drop_from_cache(path)
        read_s = _dd([f"if={path}", "of=/dev/null", f"bs={BLOCK}"])
    finally:
        path.unlink(missing_ok=True)
    return DiskLimit(count * BLOCK, write_s, read_s, fs_type(directory))


def _dd(operands: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(["dd", *operands], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"dd {' '.join(operands)}: {result.stderr.strip()}")
    return seconds


def image_bytes(paths) -> int:  # noqa: ANN001
    """The bytes the images take on disk (a sparse one is as long as the memory, with holes)."""
    total = 0
    for path in paths:
        info = os.stat(path)
        total += min(info.st_size, info.st_blocks * 512)
    return total


# --- a guest as big as the machine allows ------------------------------------------------------


def big_guest_mib(save_dir: Path | str, cap_mib: int | None = None) -> tuple[int, int]:
    """The memory and the fill (MiB) of one guest as big as this machine allows with room to
    spare (``big_guest_size`` of its memory now and the free space of ``save_dir``)."""
    meminfo = Path("/proc/meminfo").read_text()
    total, available = (int(re.search(rf"{key}:\s+(\d+)", meminfo).group(1)) * 1024
                        for key in ("MemTotal", "MemAvailable"))
    free = os.statvfs(save_dir)
    return big_guest_size(total, available, free.f_bavail * free.f_frsize, cap_mib)


def big_guest_size(total: int, available: int, disk_free: int, cap_mib: int | None = None) -> tuple[int, int]:
    """Pure: while a guest is saved, its memory and the image's pages in the page cache are both
    in RAM, so half of what is available beyond a reserve (a fifth of the memory, at least
    4 GiB); and no more than half the free space of the images' file system (the image, then the
    disk probe of the same size, and room for others). In whole GiB, never more than
    ``cap_mib``; 80% of it filled with random data. Raises RuntimeError below 1 GiB."""
    reserve = max(4 << 30, total // 5)
    fits = min((available - reserve) // 2, disk_free // 2)
    if cap_mib:
        fits = min(fits, cap_mib << 20)
    gib = fits >> 30
    if gib < 1:
        raise RuntimeError(f"--big: no room for a guest of 1 GiB ({available / 2**30:.1f} GiB of memory "
                           f"available, {disk_free / 2**30:.1f} GiB free for the images)")
    return gib * 1024, gib * 1024 * 4 // 5


# --- reporting ----------------------------------------------------------------------------------


def describe(limits: list[DiskLimit]) -> str:
    """The limit as measured in this run: medians with min-max of every measurement."""
    if not limits:
        return "the disk's limit was not measured"
    writes, reads = [x.write_bps / 1e6 for x in limits], [x.read_bps / 1e6 for x in limits]
    kinds = sorted({x.fs_type for x in limits})
    warn = " (it may compress: zeros are cheaper than images there)" if set(kinds) & set(COMPRESSING) else ""
    return (f"the disk's limit, measured {len(limits)} times in this run with dd on the images' file "
            f"system ({', '.join(kinds)}{warn}), {median([x.nbytes for x in limits]) / 1e6:.0f} MB each: "
            f"write until flushed {_mbs(writes)}, read from a cold cache {_mbs(reads)}")


def _mbs(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.0f} MB/s"
    return f"{median(values):.0f} MB/s ({min(values):.0f}-{max(values):.0f})"


def _throughputs(rounds: list[dict]) -> tuple[float, float]:
    """Bytes per second of the save and the resume: the images' bytes over the median times."""
    size = median([r["bytes"] for r in rounds if "bytes" in r])
    return size / median([r["save"] for r in rounds]), size / median([r["resume"] for r in rounds])


def shares(results: dict[str, list[dict]], limits: list[DiskLimit]) -> str:
    """Each contender's save and resume throughput and its share of the disk's write and
    cold-read bandwidth (their medians in the same run)."""
    write = median([x.write_bps for x in limits])
    read = median([x.read_bps for x in limits])
    rows = []
    for contender, rounds in results.items():
        save, resume = _throughputs(rounds)
        rows.append([contender, f"{save / 1e6:.0f} MB/s", f"{save / write:.0%}",
                     f"{resume / 1e6:.0f} MB/s", f"{resume / read:.0%}"])
    return table(["contender", "save throughput", "share of the disk's write", "resume throughput",
                  "share of the disk's cold read"], rows) + (
        "\n\nA save-all ends when the command returns (compare) or the last QEMU has exited (hostcycle);"
        "\nmgsave's includes its flush of each image, the others' do not: above 100%, pages of the images"
        "\nwere still in the page cache when it ended.")


def share_targets(results: dict[str, list[dict]], limits: list[DiskLimit], big: bool) -> list[list[str]]:
    """Rows (what, measured, target, verdict) for mgsave's shares of the limit: a big guest's
    save with channels at >= 80% of the write bandwidth, small guests' at >= 70%, and every
    resume at >= 70% of the cold read."""
    write = median([x.write_bps for x in limits])
    read = median([x.read_bps for x in limits])
    rows = []
    for contender in (c for c in ("mgsave", "mgsave-channels") if c in results):
        save, resume = _throughputs(results[contender])
        save_target = 0.80 if big and contender == "mgsave-channels" else 0.70
        for what, share, target in (("save", save / write, save_target), ("resume", resume / read, 0.70)):
            rows.append([f"{what}-all {contender} / the disk's limit", f"{share:.0%}", f">= {target:.0%}",
                         "met" if share >= target else "MISSED"])
    return rows
