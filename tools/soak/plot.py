"""The soak's figure: four panels over time (minutes), the hot swap and the worker kill marked.

    plot(report, "docs/soak.png")

Panels: RSS per process; open fds per process (threads dashed); SQLite DB and WAL size;
Recommend p50/p99 per sampling window with errors (all kinds) as bars on their own axis.
Reads only the report dict that cli.py writes as JSON, so a figure can be redrawn from a JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from tools.soak.verdict import series  # noqa: E402


def _label(pid: str, role: str) -> str:
    return "all processes" if pid == "total" else f"{role} {pid}"


def plot(report: dict[str, Any], out: Path | str) -> None:
    samples = report["samples"]
    fig, axes = plt.subplots(4, 1, figsize=(10, 13), sharex=True)
    ax_rss, ax_fd, ax_db, ax_lat = axes

    anon = series(samples, "anon_mib")
    for pid, (role, ts, vs) in series(samples, "rss_mib").items():
        if pid != "total":
            (line,) = ax_rss.plot([t / 60 for t in ts], vs, label=_label(pid, role))
            _, at, av = anon[pid]
            ax_rss.plot([t / 60 for t in at], av, linestyle="--", color=line.get_color())
    ax_rss.set_ylabel("RSS (solid), of it anonymous (dashed), MiB")
    ax_rss.set_title("Resident memory per process")

    threads = series(samples, "threads")
    for pid, (role, ts, vs) in series(samples, "fds").items():
        if pid == "total":
            continue
        (line,) = ax_fd.plot([t / 60 for t in ts], vs, label=f"{_label(pid, role)} fds")
        _, tt, tv = threads[pid]
        ax_fd.plot([t / 60 for t in tt], tv, linestyle="--", color=line.get_color())
    ax_fd.set_ylabel("open fds (solid), threads (dashed)")
    ax_fd.set_title("File descriptors and threads per process")

    ts = [s["t"] / 60 for s in samples]
    ax_db.plot(ts, [s["db_bytes"] / 2**20 for s in samples], label="state.db")
    ax_db.plot(ts, [s["wal_bytes"] / 2**20 for s in samples], label="state.db-wal")
    ax_db.axhline(report["verdict"]["wal"]["bound_mib"], color="grey", linestyle=":", label="WAL bound")
    ax_db.set_ylabel("MiB")
    ax_db.set_title("SQLite state store")

    kind = report["verdict"]["p99"]["kind"]
    mids, p50, p99, errs = [], [], [], []
    for w in report["windows"]:
        lat = w["kinds"].get(kind, {}).get("latency_ms")
        mids.append((w["t0"] + w["t1"]) / 120)
        p50.append(lat["p50"] if lat else float("nan"))
        p99.append(lat["p99"] if lat else float("nan"))
        errs.append(sum(sum(k["errors"].values()) for k in w["kinds"].values()))
    ax_lat.plot(mids, p50, label=f"{kind} p50")
    ax_lat.plot(mids, p99, label=f"{kind} p99")
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_title(f"{kind} latency per {report['interval_s']:g} s window; errors of every kind")
    ax_err = ax_lat.twinx()
    width = report["interval_s"] / 60 * 0.8
    ax_err.bar(mids, errs, width=width, color="red", alpha=0.3, label="errors")
    ax_err.set_ylabel("errors per window")
    ax_err.set_ylim(bottom=0)
    ax_lat.set_xlabel("minutes since the load started")

    for ax in axes:
        ev_kill = [("worker SIGKILL", report["events"].get("kill"))]
        swaps = report["events"].get("swaps") or [report["events"].get("swap")]
        for name, ev in ev_kill + [("hot swap", e) for e in swaps]:
            if ev:
                ax.axvline(ev["t"] / 60, color="black", linestyle=":", linewidth=1)
                ax.annotate(
                    name,
                    (ev["t"] / 60, 1.0),
                    xycoords=("data", "axes fraction"),
                    fontsize=7,
                    rotation=90,
                    va="top",
                    ha="right",
                )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(report["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
