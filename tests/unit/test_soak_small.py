"""`python -m tools.soak`: its goals judged on made-up series (tools/soak/verdict.py), and one
short real run (gateway, 2 workers, SQLite, a worker SIGKILL and a hot swap) whose report must
show all of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tools.soak import verdict
from tools.soak.cli import main

G = verdict.Goals(duration_s=600.0, warmup_s=60.0)


def samples(
    rss: dict[str, Any], *, fds: int = 30, wal: int = 4 << 20, every: float = 10.0, until: float = 600.0
) -> list[dict[str, Any]]:
    """One sample every `every` s; rss: {pid: (role, first_t, f(t) -> MiB)}."""
    out = []
    t = 0.0
    while t <= until:
        procs = {
            pid: {"role": role, "rss_mib": f(t), "fds": fds, "threads": 12}
            for pid, (role, first, f) in rss.items()
            if t >= first
        }
        out.append({"t": t, "procs": procs, "db_bytes": 1 << 20, "wal_bytes": wal})
        t += every
    return out


def test_flat_memory_passes_and_a_leak_of_ten_percent_fails() -> None:
    flat = samples({"1": ("gateway", 0, lambda t: 60.0), "2": ("worker", 0, lambda t: 700.0 + (t % 20))})
    assert verdict.memory(flat, G)["passed"]
    leak = samples({"1": ("gateway", 0, lambda t: 60.0), "2": ("worker", 0, lambda t: 700.0 + 0.25 * t)})
    m = verdict.memory(leak, G)
    assert not m["passed"]
    assert m["processes"]["2"]["growth_pct"] == pytest.approx(100 * 0.25 * 300 / 775, rel=0.01)
    assert m["processes"]["1"]["passed"] and not m["processes"]["2"]["passed"]


def test_a_worker_restarted_by_the_kill_is_its_own_series_judged_only_when_old_enough() -> None:
    # killed at 150 s: the replacement is up 150 s before the second half (>= warm-up): judged;
    # one that started at 280 s is too young to judge, and its growth does not fail the run.
    s = samples(
        {
            "1": ("gateway", 0, lambda t: 60.0),
            "2": ("worker", 0, lambda t: 700.0),
            "3": ("worker", 150, lambda t: 700.0),
            "4": ("worker", 280, lambda t: 300.0 + t),
        }
    )
    for p in s:
        if p["t"] >= 150:
            del p["procs"]["2"]
    m = verdict.memory(s, G)
    assert m["processes"]["3"]["judged"] and not m["processes"]["2"]["judged"]
    assert not m["processes"]["4"]["judged"]
    assert m["processes"]["total"]["judged"]  # the sum is judged too: 4's growth shows there
    assert not m["processes"]["total"]["passed"] and not m["passed"]


def test_wal_fds_and_p99_goals() -> None:
    flat = {"1": ("gateway", 0, lambda t: 60.0)}
    assert verdict.wal(samples(flat), G)["passed"]
    assert not verdict.wal(samples(flat, wal=40 << 20), G)["passed"]
    assert verdict.fds(samples(flat), G)["passed"]
    growing = samples(flat)
    for s in growing:
        s["procs"]["1"]["fds"] = 30 + int(s["t"] // 20)  # one more every 20 s: 15 over the half
    f = verdict.fds(growing, G)
    assert not f["passed"] and f["processes"]["1"]["fds_end"] > f["processes"]["1"]["fds_start"]
    # p99 of plain Recommend: first window [60, 120), last [540, 600).
    calls = [["recommend", t / 10, 0.010, "OK", "v"] for t in range(600, 1200)]
    calls += [["recommend", t / 10, 0.011, "OK", "v"] for t in range(5400, 6000)]
    calls += [["explain", 550.0, 9.0, "OK", "v"], ["recommend", 100.0, 5.0, "UNAVAILABLE", ""]]
    p = verdict.p99(calls, G)
    assert p["passed"] and p["ratio"] == pytest.approx(1.1, abs=0.01)  # explain and errors ignored
    calls += [["recommend", 599.0, 0.050, "OK", "v"] for _ in range(30)]
    assert not verdict.p99(calls, G)["passed"]
    w = verdict.windows(calls, [0.0, 300.0, 600.0])
    assert w[0]["kinds"]["recommend"]["errors"] == {"UNAVAILABLE": 1}
    assert w[1]["kinds"]["explain"]["n"] == 1


@pytest.mark.e2e
def test_a_short_real_soak_reports_every_process_and_both_events(model_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--minutes", "0.6", "--models", str(model_root), "--out", str(out), "--interval", "2"]
    rc = main([*args, "--explain-rate", "0.2", "--stream-rate", "0.2", "--upsert-rate", "0.3"])
    report = json.loads((out / "soak.json").read_text())
    assert rc == (0 if report["verdict"]["pass"] else 1)
    assert (out / "soak.png").stat().st_size > 10_000
    kill, swap = report["events"]["kill"], report["events"]["swap"]
    assert kill["replacement_pid"] is not None
    assert swap["reload_rc"] == 0, swap["reload_stderr"]
    assert report["events"]["swaps"] == [swap]
    pids = {pid: p["role"] for s in report["samples"] for pid, p in s["procs"].items()}
    assert sorted(pids.values()).count("gateway") == 1
    assert str(kill["victim_pid"]) in pids and str(kill["replacement_pid"]) in pids
    assert report["answered_by_version"].get(swap["to_version"], 0) > 0  # the swap took effect
    counts = report["status_counts"]
    assert all(counts[k].get("OK", 0) > 0 for k in ("recommend", "explain", "stream", "feedback", "upsert"))
    assert max(s["wal_bytes"] for s in report["samples"]) > 0
    assert all(p["fds"] > 0 and p["threads"] > 0 for s in report["samples"] for p in s["procs"].values())
    assert set(report["verdict"]) >= {"pass", "memory", "wal", "fds", "p99"}
