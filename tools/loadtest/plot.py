"""The latency-versus-load plot of a set of Reports (PNG, matplotlib); no measuring."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.loadtest.config import KINDS
from tools.loadtest.report import Report

_KIND_COLORS = {
    "recommend": "tab:blue",
    "explain": "tab:orange",
    "stream": "tab:green",
    "feedback": "tab:red",
}
BASELINE_NAME = "echo"


def plot(reports: Sequence[Report], path: str | Path) -> None:
    """PNG: one row per target; latency of OK answers (p50 solid, p99 dashed) per request kind versus
    load, one column per mode, and for open loops what was served versus what was offered. Rows other
    than the echo baseline also show the baseline's latency in grey."""
    import matplotlib

    matplotlib.use("Agg")  # no display here; must precede pyplot
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.name for r in reports))
    modes = [m for m in ("closed", "open") if any(r.mode == m for r in reports)]
    ncols = len(modes) + (1 if "open" in modes else 0)
    fig, axes = plt.subplots(len(names), ncols, figsize=(6.0 * ncols, 4.2 * len(names)), squeeze=False)
    for row, name in zip(axes, names, strict=True):
        for ax, mode in zip(row, modes, strict=False):
            reps = sorted((r for r in reports if r.name == name and r.mode == mode), key=lambda r: r.level)
            base = (
                sorted(
                    (r for r in reports if r.name == BASELINE_NAME and r.mode == mode), key=lambda r: r.level
                )
                if name != BASELINE_NAME
                else []
            )
            _latency_panel(ax, reps, base, mode)
            ax.set_title(f"{name}: {mode} loop", fontsize=10)
        if "open" in modes:
            _served_panel(
                row[-1],
                sorted((r for r in reports if r.name == name and r.mode == "open"), key=lambda r: r.level),
            )
            row[-1].set_title(f"{name}: open loop, served vs offered", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _x(r: Report) -> float:
    # Open loop: the load is what was offered. Closed loop: the load is what the clients got served.
    return (r.rate or 0.0) if r.mode == "open" else r.throughput


def _latency_panel(ax: Any, reps: list[Report], base: list[Report], mode: str) -> None:
    annotated = False
    own_x = [_x(r) for r in reps]
    for kind in KINDS:
        pts = [(r, lat) for r in reps if (lat := r.kinds[kind].latency_ms)]
        if not pts:
            continue
        xs = [_x(r) for r, _ in pts]
        c = _KIND_COLORS[kind]
        ax.plot(xs, [lat["p50"] for _, lat in pts], "o-", color=c, label=f"{kind} p50")
        ax.plot(xs, [lat["p99"] for _, lat in pts], "s--", color=c, label=f"{kind} p99")
        if mode == "closed" and not annotated:
            annotated = True
            for (r, lat), x in zip(pts, xs, strict=True):
                ax.annotate(
                    f"c={r.concurrency}",
                    (x, lat["p99"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 4),
                )
    pts_b = [(r, lat) for r in base if (lat := r.latency_ms)]
    if pts_b:
        xs = [_x(r) for r, _ in pts_b]
        ax.plot(
            xs,
            [lat["p50"] for _, lat in pts_b],
            "o-",
            color="grey",
            lw=1,
            ms=3,
            label=f"{BASELINE_NAME} (all) p50",
        )
        ax.plot(
            xs,
            [lat["p99"] for _, lat in pts_b],
            "s--",
            color="grey",
            lw=1,
            ms=3,
            label=f"{BASELINE_NAME} (all) p99",
        )
    if base and own_x and max(own_x) > 0:
        # The panel's scale is its own target's: the echo baseline serves 5-10x more per second
        # and would squash this target's points against the axis; its lines are clipped instead.
        ax.set_xlim(0, max(own_x) * 1.1)
    ax.set_yscale("log")
    ax.set_ylabel("latency of OK answers (ms)")
    ax.set_xlabel(
        "offered load (requests/s, fixed schedule; latency from scheduled send)"
        if mode == "open"
        else "throughput (OK answers/s)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def _served_panel(ax: Any, reps: list[Report]) -> None:
    xs = [r.rate or 0.0 for r in reps]
    ax.plot(xs, [r.throughput for r in reps], "o-", color="tab:blue", label="OK answers/s")
    ax.plot(xs, [r.errors / r.elapsed_s for r in reps], "x:", color="tab:red", label="errors/s")
    ax.plot([0, max(xs, default=1.0)], [0, max(xs, default=1.0)], color="grey", lw=0.8, label="offered")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("answers/s")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
