"""What the soak watches, one sample every N seconds: per process (the gateway and each of its
workers, by pid) RSS (and its anonymous / file-backed split), open fds and threads; the SQLite
state file and its WAL.

    s = Sampler(gateway_pid, state_path)
    s.take(t)          # -> {"t", "procs": {pid: {...}}, "db_bytes", "wal_bytes"}; also kept in s.samples

A worker the gateway restarts is a new pid: it appears as a new series with role "worker" and
its own first sample time, and the old pid's series simply ends. Judging those series is
verdict.py's job. All reads are from /proc and stat; a process that vanished between listing and
reading is skipped, never an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tools.harness.procfs import alive, children, rss_kib


def status_fields(pid: int) -> dict[str, int]:
    """Threads and the RSS split (RssAnon: heap; RssFile: mapped files such as model weights), kB."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("Threads", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class Sampler:
    def __init__(self, gateway_pid: int, state: Path) -> None:
        self.gateway_pid, self.state = gateway_pid, Path(state)
        self.samples: list[dict[str, Any]] = []

    def take(self, t: float) -> dict[str, Any]:
        procs: dict[str, dict[str, Any]] = {}
        pids = [(self.gateway_pid, "gateway"), *((p, "worker") for p in children(self.gateway_pid))]
        for pid, role in pids:
            if not alive(pid):
                continue
            rss, fds, st = rss_kib(pid), fd_count(pid), status_fields(pid)
            if rss == 0 or fds is None or "Threads" not in st:
                continue  # gone while being read
            procs[str(pid)] = {
                "role": role,
                "rss_mib": round(rss / 1024.0, 2),
                "anon_mib": round(st.get("RssAnon", 0) / 1024.0, 2),
                "file_mib": round(st.get("RssFile", 0) / 1024.0, 2),
                "fds": fds,
                "threads": st["Threads"],
            }
        sample = {
            "t": round(t, 2),
            "procs": procs,
            "db_bytes": file_bytes(self.state),
            "wal_bytes": file_bytes(self.state.with_name(self.state.name + "-wal")),
        }
        self.samples.append(sample)
        return sample
