"""The soak's goals, judged on its samples and call outcomes (pure functions: unit-tested on
made-up series).

    goals = judge(samples, outcomes, Goals(duration_s=1800, warmup_s=180))
    goals["pass"], goals["memory"], goals["wal"], goals["fds"], goals["p99"]
    windows(outcomes, edges) -> per window and kind: n, p50/p99 (ms), errors by code

- memory: each process's RSS fitted with a line over the second half of the run; growth =
  the fit's rise over that half / its value at the half's start, < 5%. A process is judged only
  when it was up `warmup_s` before the second half began: a worker restarted by the kill
  is a new pid, judged by the same rule (the run kills early enough for it to qualify) or else
  listed as not judged, never silently folded into another series. The gateway and workers
  together (the sum per sample) are judged the same way.
- wal: the largest WAL file seen <= a bound (SQLite's checkpoints keep it there).
- fds: per judged process, open fds at the end (median of the last 3 samples) minus at the
  second half's start (median of its first 3) <= max(4, 5% of the start).
- p99: plain Recommend p99 over the last window of the run <= 1.2x that over the first window
  after warm-up; each window is 10% of the run (at least 10 s). The worker kill and the hot
  swap happen between them, so neither lands in a compared window.
Errors are counted and reported, not judged: the kill is meant to cause a few.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tools.harness.percentiles import latency_ms

Row = Sequence[Any]  # traffic.Outcome.row(): [kind, t, latency_s, code, model_version]


@dataclass(frozen=True)
class Goals:
    duration_s: float
    warmup_s: float
    max_rss_growth_pct: float = 5.0
    wal_bound_mib: float = 32.0
    fd_slack: int = 4
    fd_slack_pct: float = 5.0
    max_p99_ratio: float = 1.2
    p99_kind: str = "recommend"

    @property
    def fit_start_s(self) -> float:
        return self.duration_s / 2.0

    @property
    def p99_window_s(self) -> float:
        return max(10.0, 0.1 * self.duration_s)


def series(samples: Sequence[dict[str, Any]], field: str) -> dict[str, tuple[str, list[float], list[float]]]:
    """{pid: (role, times, values)} of one per-process field, plus "total" (the sum per sample)."""
    out: dict[str, tuple[str, list[float], list[float]]] = {}
    total_t, total_v = [], []
    for s in samples:
        for pid, p in s["procs"].items():
            role, ts, vs = out.setdefault(pid, (p["role"], [], []))
            ts.append(s["t"])
            vs.append(float(p[field]))
        if s["procs"]:
            total_t.append(s["t"])
            total_v.append(sum(float(p[field]) for p in s["procs"].values()))
    out["total"] = ("all", total_t, total_v)
    return out


def _judged(ts: list[float], g: Goals, interval: float) -> bool:
    """Up `warmup_s` before the second half, and still up at the end."""
    return (
        bool(ts) and ts[0] <= g.fit_start_s - g.warmup_s + interval and ts[-1] >= g.duration_s - 2 * interval
    )


def _interval(samples: Sequence[dict[str, Any]]) -> float:
    ts = [s["t"] for s in samples]
    return float(np.median(np.diff(ts))) if len(ts) > 1 else 0.0


def memory(samples: Sequence[dict[str, Any]], g: Goals) -> dict[str, Any]:
    interval = _interval(samples)
    procs, ok = {}, True
    for pid, (role, ts, vs) in series(samples, "rss_mib").items():
        entry: dict[str, Any] = {
            "role": role,
            "first_t": ts[0] if ts else None,
            "last_t": ts[-1] if ts else None,
        }
        t = np.asarray(ts)
        v = np.asarray(vs)
        sel = t >= g.fit_start_s
        if not _judged(ts, g, interval) or sel.sum() < 4:
            entry["judged"] = False
            procs[pid] = entry
            continue
        slope, intercept = np.polyfit(t[sel], v[sel], 1)
        t_a, t_b = float(t[sel][0]), float(t[sel][-1])
        start = slope * t_a + intercept
        growth = 100.0 * slope * (t_b - t_a) / start
        entry.update(
            judged=True,
            fit_from_s=round(t_a, 1),
            fit_to_s=round(t_b, 1),
            rss_at_fit_start_mib=round(float(start), 1),
            slope_mib_per_h=round(float(slope) * 3600.0, 2),
            growth_pct=round(float(growth), 2),
            max_mib=round(float(v.max()), 1),
            passed=bool(growth < g.max_rss_growth_pct),
        )
        ok = ok and entry["passed"]
        procs[pid] = entry
    judged = [e for e in procs.values() if e["judged"]]
    return {"passed": ok and bool(judged), "limit_pct": g.max_rss_growth_pct, "processes": procs}


def wal(samples: Sequence[dict[str, Any]], g: Goals) -> dict[str, Any]:
    w = [s["wal_bytes"] for s in samples]
    d = [s["db_bytes"] for s in samples]
    max_mib = max(w, default=0) / 2**20
    return {
        "passed": bool(samples) and max_mib <= g.wal_bound_mib,
        "bound_mib": g.wal_bound_mib,
        "max_wal_mib": round(max_mib, 2),
        "end_wal_mib": round((w[-1] if w else 0) / 2**20, 2),
        "db_start_mib": round((d[0] if d else 0) / 2**20, 2),
        "db_end_mib": round((d[-1] if d else 0) / 2**20, 2),
    }


def fds(samples: Sequence[dict[str, Any]], g: Goals) -> dict[str, Any]:
    interval = _interval(samples)
    procs: dict[str, dict[str, Any]] = {}
    ok = True
    for pid, (role, ts, vs) in series(samples, "fds").items():
        if pid == "total":
            continue
        threads = series(samples, "threads")[pid][2]
        window = [v for t, v in zip(ts, vs, strict=True) if t >= g.fit_start_s]
        if not _judged(ts, g, interval) or len(window) < 4:
            procs[pid] = {"role": role, "judged": False}
            continue
        start, end = statistics.median(window[:3]), statistics.median(window[-3:])
        slack = max(g.fd_slack, g.fd_slack_pct / 100.0 * start)
        passed = end - start <= slack
        procs[pid] = {
            "role": role,
            "judged": True,
            "fds_start": start,
            "fds_end": end,
            "fds_max": max(vs),
            "threads_start": threads[len(ts) - len(window)],
            "threads_end": threads[-1],
            "threads_max": max(threads),
            "passed": passed,
        }
        ok = ok and passed
    judged = [e for e in procs.values() if e["judged"]]
    return {"passed": ok and bool(judged), "processes": procs}


def p99(outcomes: Sequence[Row], g: Goals) -> dict[str, Any]:
    w = g.p99_window_s
    first = (g.warmup_s, g.warmup_s + w)
    last = (g.duration_s - w, g.duration_s)

    def lat(a: float, b: float) -> list[float]:
        return [r[2] for r in outcomes if r[0] == g.p99_kind and r[3] == "OK" and a <= r[1] < b]

    p_first = latency_ms(lat(*first), (("p50", 50), ("p99", 99)), stats=("n",))
    p_last = latency_ms(lat(*last), (("p50", 50), ("p99", 99)), stats=("n",))
    ratio = None if not p_first or not p_last else round(p_last["p99"] / p_first["p99"], 3)
    return {
        "passed": ratio is not None and ratio <= g.max_p99_ratio,
        "kind": g.p99_kind,
        "limit_ratio": g.max_p99_ratio,
        "first_window_s": [round(x, 1) for x in first],
        "last_window_s": [round(x, 1) for x in last],
        "first": p_first,
        "last": p_last,
        "ratio": ratio,
    }


def windows(outcomes: Sequence[Row], edges: Sequence[float]) -> list[dict[str, Any]]:
    """Per window [edges[i], edges[i+1]) and kind: calls, p50/p99 of the OK ones, errors by code."""
    by: dict[tuple[int, str], list[Row]] = defaultdict(list)
    e = np.asarray(edges)
    for r in outcomes:
        i = int(np.searchsorted(e, r[1], side="right")) - 1
        if 0 <= i < len(edges) - 1:
            by[(i, r[0])].append(r)
    out = []
    for i in range(len(edges) - 1):
        kinds = {}
        for (j, kind), rows in sorted(by.items()):
            if j != i:
                continue
            ok = [r[2] for r in rows if r[3] == "OK"]
            kinds[kind] = {
                "n": len(rows),
                "latency_ms": latency_ms(ok, (("p50", 50), ("p99", 99)), digits=2, stats=()),
                "errors": dict(Counter(r[3] for r in rows if r[3] != "OK")),
            }
        out.append({"t0": round(float(edges[i]), 2), "t1": round(float(edges[i + 1]), 2), "kinds": kinds})
    return out


def errors(outcomes: Sequence[Row]) -> dict[str, dict[str, int]]:
    """{kind: {code: calls}} over the whole run, OK included."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for r in outcomes:
        out[r[0]][r[3]] += 1
    return {k: dict(v) for k, v in sorted(out.items())}


def judge(samples: Sequence[dict[str, Any]], outcomes: Sequence[Row], g: Goals) -> dict[str, Any]:
    goals = {
        "memory": memory(samples, g),
        "wal": wal(samples, g),
        "fds": fds(samples, g),
        "p99": p99(outcomes, g),
    }
    return {"pass": all(v["passed"] for v in goals.values()), "settings": asdict(g), **goals}
