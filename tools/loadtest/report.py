"""What one load run measured: per-kind counts and latencies (Recorder -> Report), the tables,
the JSON file. Nothing here sends a request."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tools.harness.percentiles import latency_ms
from tools.loadtest.config import KINDS, LoadConfig


@dataclass
class KindStats:
    """One request kind: counts per gRPC status code and latency of its OK answers."""

    requests: int
    ok: int
    status_counts: dict[str, int]
    latency_ms: dict[str, float] | None  # OK answers only, from the scheduled send time
    first_piece_ms: dict[str, float] | None = None  # streams: to the first text piece
    first_items_ms: dict[str, float] | None = None  # streams: to the items event


@dataclass
class Report:
    """What one load run measured (warmup excluded)."""

    name: str
    target: str
    mode: str  # "closed" | "open"
    concurrency: int | None
    rate: float | None  # offered rate (open loop)
    tool: str
    elapsed_s: float  # from the start of measuring to the last answer
    requests: int  # issued; each has exactly one status in status_counts
    sent: int  # actually put on the wire
    expired_before_send: int  # deadline passed while waiting for --max-outstanding
    ok: int
    errors: int
    throughput: float  # OK answers per second
    status_counts: dict[str, int]
    latency_ms: dict[str, float] | None  # all OK answers
    kinds: dict[str, KindStats]
    send_lag_ms: dict[str, float] | None = None  # open loop: actual minus scheduled send time
    client_cpu: float = 0.0  # this process's CPU seconds per wall second (1.0 = one core busy)
    host_load: float = 0.0  # 1-minute load average when the run started: was the machine busy?
    error_examples: dict[str, str] = field(default_factory=dict)  # status code -> first message seen

    @property
    def level(self) -> float:
        return float((self.rate if self.mode == "open" else self.concurrency) or 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """Inverse of to_dict, e.g. to re-plot a JSON file written by --json."""
        return cls(**{**d, "kinds": {k: KindStats(**v) for k, v in d["kinds"].items()}})

    def table(self) -> str:
        load = f"rate {self.rate:g}/s" if self.mode == "open" else f"concurrency {self.concurrency}"
        lines = [
            f"{self.name} ({self.target})  {self.mode} loop, {load}, {self.elapsed_s:.1f} s, "
            f"tool {self.tool}, client cpu {self.client_cpu:.2f}, host load {self.host_load:.1f}",
            f"  {'kind':<10}{'requests':>9}{'ok':>9}{'ok/s':>9}{'p50 ms':>9}{'p90 ms':>9}"
            f"{'p99 ms':>9}{'p99.9 ms':>10}{'errors':>8}",
        ]
        rows = [(k, s) for k, s in self.kinds.items() if s.requests]
        rows.append(("all", KindStats(self.requests, self.ok, self.status_counts, self.latency_ms)))
        for kind, s in rows:
            lat = s.latency_ms or {}
            cells = "".join(f"{lat[q]:>9.2f}" if q in lat else f"{'-':>9}" for q in ("p50", "p90", "p99"))
            p999 = f"{lat['p99_9']:>10.2f}" if "p99_9" in lat else f"{'-':>10}"
            rate = s.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0
            lines.append(
                f"  {kind:<10}{s.requests:>9}{s.ok:>9}{rate:>9.1f}{cells}{p999}{s.requests - s.ok:>8}"
            )
            if s.first_piece_ms:
                lines.append(
                    f"  {'':<10}first text piece p50 {s.first_piece_ms['p50']:.2f} ms, "
                    f"p99 {s.first_piece_ms['p99']:.2f} ms"
                )
        lines.append("  status: " + ", ".join(f"{c} {n}" for c, n in sorted(self.status_counts.items())))
        for code, msg in sorted(self.error_examples.items()):
            lines.append(f"  e.g. {code}: {msg[:120]}")
        if self.expired_before_send:
            lines.append(f"  {self.expired_before_send} requests expired waiting for --max-outstanding")
        if self.send_lag_ms:
            lines.append(
                f"  send lag behind schedule p50 {self.send_lag_ms['p50']:.2f} ms, "
                f"p99 {self.send_lag_ms['p99']:.2f} ms"
            )
        return "\n".join(lines)


class Recorder:
    """Outcomes of requests scheduled at or after `measure_from` (earlier ones are warmup)."""

    def __init__(self) -> None:
        self.measure_from = math.inf  # set by start()
        self.latency: dict[str, list[float]] = {k: [] for k in KINDS}
        self.codes: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
        self.first_piece: list[float] = []
        self.first_items: list[float] = []
        self.send_lag: list[float] = []
        self.sent = 0
        self.expired = 0
        self.error_examples: dict[str, str] = {}  # the first error message seen per status code
        self.last_done = 0.0

    def start(self, warmup: float) -> float:
        """Called when the load begins; returns that time. Measuring begins `warmup` seconds later."""
        t0 = time.perf_counter()
        self.measure_from = self.last_done = t0 + warmup
        return t0

    def done(self, kind: str, code: str, origin: float, t_end: float, measured: bool) -> None:
        if not measured:
            return
        self.codes[kind][code] += 1
        if code == "OK":
            self.latency[kind].append(t_end - origin)
        if t_end > self.last_done:
            self.last_done = t_end

    def report(self, cfg: LoadConfig, cpu_s: float, wall_s: float, host_load: float) -> Report:
        elapsed = max(self.last_done - self.measure_from, 1e-9)
        kinds: dict[str, KindStats] = {}
        total: Counter[str] = Counter()
        for k in KINDS:
            c = self.codes[k]
            total.update(c)
            kinds[k] = KindStats(
                requests=sum(c.values()),
                ok=c["OK"],
                status_counts=dict(c),
                latency_ms=latency_ms(self.latency[k]),
            )
        kinds["stream"].first_piece_ms = latency_ms(self.first_piece)
        kinds["stream"].first_items_ms = latency_ms(self.first_items)
        ok = total["OK"]
        requests = sum(total.values())
        return Report(
            name=cfg.name or cfg.target,
            target=cfg.target,
            mode=cfg.mode,
            concurrency=cfg.concurrency if cfg.mode == "closed" else None,
            rate=cfg.rate,
            tool="own",
            elapsed_s=round(elapsed, 4),
            requests=requests,
            sent=self.sent,
            expired_before_send=self.expired,
            ok=ok,
            errors=requests - ok,
            throughput=round(ok / elapsed, 2),
            status_counts=dict(total),
            latency_ms=latency_ms(list(itertools.chain.from_iterable(self.latency.values()))),
            kinds=kinds,
            send_lag_ms=latency_ms(self.send_lag) if cfg.mode == "open" else None,
            client_cpu=round(cpu_s / max(wall_s, 1e-9), 3),
            host_load=host_load,
            error_examples=dict(self.error_examples),
        )


def meta() -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "argv": sys.argv,
    }


def workload(cfg: LoadConfig) -> dict[str, Any]:
    """The request mix and bounds of a config, for the JSON file (the item list as its length)."""
    d = dataclasses.asdict(cfg)
    d["items"] = len(cfg.items)
    for k in ("target", "name", "concurrency", "rate"):
        d.pop(k)
    return d


def write_json(path: str | Path, reports: Sequence[Report], extra: dict[str, Any] | None = None) -> None:
    doc = {"meta": {**meta(), **(extra or {})}, "reports": [r.to_dict() for r in reports]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def summary_table(reports: Sequence[Report]) -> str:
    lines = [
        f"{'target':<16}{'mode':<7}{'level':>8}{'ok/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
        f"{'errors':>8}{'cpu':>6}"
    ]
    for r in reports:
        lat = r.latency_ms or {}
        cells = "".join(f"{lat[q]:>9.2f}" if q in lat else f"{'-':>9}" for q in ("p50", "p99"))
        p999 = f"{lat['p99_9']:>10.2f}" if "p99_9" in lat else f"{'-':>10}"
        lines.append(
            f"{r.name[:15]:<16}{r.mode:<7}{r.level:>8g}{r.throughput:>10.1f}{cells}{p999}"
            f"{r.errors:>8}{r.client_cpu:>6.2f}"
        )
    return "\n".join(lines)


# What a healthy server may answer under a bounded load: OK, or the load was past its capacity
# (a deadline passed, or --max-in-flight refused the request early). Anything else is a bug.
EXPECTED_STATUSES = frozenset({"OK", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})


def unexpected_statuses(reports: Sequence[Report]) -> dict[str, int]:
    """{"TARGET MODE LEVEL STATUS": count} of every status outside EXPECTED_STATUSES, for the
    server under test; the echo baseline is only measured (past its ceiling the gRPC stack itself
    answers CANCELLED, docs/loadtest.md)."""
    return {
        f"{r.name} {r.mode} {r.level:g} {code}": n
        for r in reports
        if r.name != "echo"
        for code, n in sorted(r.status_counts.items())
        if code not in EXPECTED_STATUSES and n
    }
