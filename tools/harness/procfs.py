"""Memory and CPU time of processes and their children, read from /proc (Linux only).

    rss_kib(pid) -> int            VmRSS in KiB; 0 when the process is gone
    proc_mem(pid) -> dict          {"VmRSS_kb", "VmHWM_kb"} (HWM: peak RSS); {} when gone
    cpu_s(pid) -> float            user + system CPU seconds so far, all threads; 0.0 when gone
    tree_rss_mib(pid) -> float     RSS of pid and its direct children together, in MiB
    children(pid) -> list[int]     direct children
    alive(pid) -> bool             running or stopped: not a zombie, not gone
    cmdline(pid) -> list[str]      its argv; [] when gone

Every function answers for one moment and never raises for a process that has gone; sampling
over time (threads, intervals) is the caller's.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after "pid (comm)": comm may contain spaces and parentheses."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_mem(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB; {} when it is gone."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            out[key + "_kb"] = int(line.split()[1])
    return out


def rss_kib(pid: int | str) -> int:
    return proc_mem(pid).get("VmRSS_kb", 0)


def cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds a process has used so far (all its threads); 0.0 when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def children(pid: int) -> list[int]:
    """Direct children of pid: /proc/PID/task/*/children, or a scan of /proc/*/stat without it."""
    tasks = Path(f"/proc/{pid}/task")
    if Path("/proc/self/task", str(os.getpid()), "children").exists():
        out: set[int] = set()
        with contextlib.suppress(OSError):
            for task in tasks.iterdir():
                with contextlib.suppress(OSError):
                    out.update(int(c) for c in (task / "children").read_text().split())
        return sorted(out)
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (fields := _stat_fields(d.name)) is not None and int(fields[1]) == pid:
            found.append(int(d.name))
    return sorted(found)


def alive(pid: int) -> bool:
    """Running or stopped, not a zombie and not gone."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its direct children (a gateway and its workers), in MiB."""
    return sum(rss_kib(p) for p in [pid, *children(pid)]) / 1024.0
