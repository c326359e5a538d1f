"""The export's memory budget: parsing `--max-memory`, and planning work within it.

One number bounds the whole `recgen export` process (`ExportConfig.max_memory`,
default half the machine's RAM, or of the cgroup limit if lower). A stage asks
how much of it is left (`headroom`: the budget minus what the process holds
now) and sizes its chunks from that; a stage whose smallest possible step
cannot fit raises `BudgetError` at once, naming what to change. This module
does not measure or cap anything itself; the stages do their own planning.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

LOG = logging.getLogger(__name__)

DEFAULT_SHARE = 0.5  # of the machine's (or the cgroup's) memory
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


class BudgetError(RuntimeError):
    """A stage cannot fit the memory budget; the message says what to change."""


def parse_bytes(text: str) -> int:
    """'8G', '512M', '1.5GiB', '2000000000' -> bytes (binary units: 1G = 2**30)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r}: expected a size like 8G, 512M, 1.5GiB or a number of bytes")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ValueError(f"{text!r}: the size must be positive")
    return n


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def machine_memory() -> int:
    """MemTotal from /proc/meminfo, lowered to the cgroup v2 limit where one is set."""
    total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if not total:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def default_max_memory() -> int:
    return int(machine_memory() * DEFAULT_SHARE)


def resolve(max_memory: int | None) -> int:
    return default_max_memory() if max_memory is None else int(max_memory)


def rss() -> int:
    """This process's resident memory now, in bytes (0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def headroom(max_memory: int | None) -> int:
    """What is left of the budget for the stage about to start (never negative)."""
    return max(0, resolve(max_memory) - rss())


def require(need: int, max_memory: int | None, what: str, change: str) -> int:
    """Fail at once if `need` bytes do not fit; else return the headroom.

    what: the stage and its size ("ALS training: 100,000 users x 64 factors");
    change: what the user can do ("lower --factors").
    """
    room = headroom(max_memory)
    if need > room:
        raise BudgetError(
            f"{what} needs about {fmt_bytes(need)} but the memory budget leaves {fmt_bytes(room)} "
            f"(--max-memory {fmt_bytes(resolve(max_memory))}, {fmt_bytes(rss())} in use): "
            f"raise --max-memory or {change}"
        )
    return room
