"""Serving cost as the work grows: users held by the version, and items in the catalog.

Two series on synthetic model versions, one real `recgen serve` per version:

* users (catalog fixed): 1K, 100K, 1M users whose histories the version holds
  (`<version>/users/`, memory-mapped by the worker). Measured: the worker's load
  time and the resident memory it adds (`worker.model.LoadedModel.load` in a
  fresh process), and the served Recommend latency and CPU;
* catalog (users fixed): 1K, 100K, 1M items. Measured: Recommend p50/p99 at one
  caller and at `--concurrency` callers, server CPU-µs per call (gateway and
  worker, /proc), cold users and users with history, and a retrieval-only
  timing of the same index (`worker.retrieval.Retriever`, one query a call, the
  fetch size the ranker asks for).

Each series' growth exponent is the least-squares log-log slope over its sizes.
Goals (issue 18): serving latency flat in users (exponent ≈ 0), and the catalog's
cost visible only in retrieval: the Recommend latency less the retrieval-only
time flat in items, and cold users (no retrieval) flat in items. FLAT is
|exponent| ≤ FLAT; a miss names the series.

Versions are written with the export's own writers (catalog, user histories,
scorer ONNX, `export.index.build_index`, manifest) from synthetic data: item
factors clustered by taste with norms growing with popularity (as MF factors
do), Zipf item popularity, log-normal user activity. The factors are generated,
not fitted (tools/synthetic_catalog.py fits them, minutes at 1M items): what is
measured here is cost, not quality. HNSW is not tried (its build alone takes
10-20 min at 1M items on two cores); exact and norm-bounded exact search are.

    python -m tools.bench.growth [--quick] [--json F] [--users 1000,100000,1000000]
        [--items 1000,100000,1000000] [--fixed-items 10000] [--fixed-users 10000]

`make bench` runs the same measurement as its growth phase (`measure`, at the bench plan's
Sizes) and stores the same document under "growth" in its JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tools.harness.percentiles import latency_ms
from tools.harness.procfs import cpu_s, rss_kib
from tools.harness.procs import ROOT, Gateway, env

LOG = logging.getLogger(__name__)

FACTORS = 32
REG, ALPHA = 0.05, 2.0
FLAT = 0.05  # |log-log slope| at or under this counts as flat (1000x the work: ≤ 1.41x the cost)
GENRES = "Action Comedy Drama Horror Romance Sci-Fi Thriller Documentary".split()
TUNING_QUERIES = 200
HEAD_SHARES = (0.02, 0.1, 0.2)  # norm-bounded heads tried (the export tries six: a minute each here)
THREADS = 1  # FAISS/ONNX threads in the worker and in the retrieval-only timing alike


@dataclass(frozen=True)
class Sizes:
    """The sizes of one growth run (the defaults: the full run of docs/growth.md, ~15 min on 2 cores).
    Each series needs two sizes at least: an exponent is a slope."""

    users: tuple[int, ...] = (1_000, 100_000, 1_000_000)  # held users, the users series
    items: tuple[int, ...] = (1_000, 100_000, 1_000_000)  # catalog sizes, the items series
    fixed_items: int = 10_000  # catalog size of the users series
    fixed_users: int = 10_000  # held users of the items series
    calls: int = 400  # Recommend calls per phase at 1 caller (twice that at `concurrency`)
    concurrency: int = 4
    rounds: int = 4  # chunks per phase, alternating with the reference

    def argv(self) -> list[str]:
        """The command-line flags that measure these sizes."""
        flags = {"--users": _csv(self.users), "--items": _csv(self.items)}
        flags |= {"--fixed-items": str(self.fixed_items), "--fixed-users": str(self.fixed_users)}
        flags |= {"--calls": str(self.calls), "--concurrency": str(self.concurrency)}
        flags["--rounds"] = str(self.rounds)
        return [x for kv in flags.items() for x in kv]


FULL = Sizes()
# --quick (under a minute): one version, 1K users x 1K items, is both series' reference.
QUICK = Sizes((1_000, 10_000), (1_000, 10_000), fixed_items=1_000, fixed_users=1_000, calls=40, rounds=2)
# The bench's --smoke (CI): the same three servers at the smallest sizes, a few calls each; the
# exponents have a value and no meaning (the bench judges no goal in a smoke run).
SMOKE = Sizes((300, 1_000), (300, 1_000), fixed_items=300, fixed_users=300, calls=8, concurrency=2, rounds=1)


def synthetic_version(root: Path, n_users: int, n_items: int, seed: int = 0) -> Path:
    """One complete model version under `root`, written as `export.pipeline.export_version` writes
    one (same writers, same manifest keys), from synthetic data; returns its path."""
    from export.index import build_index, save_index
    from export.mf import ALSParams
    from export.scorer_onnx import export_scorer
    from recgen.core.foldin import FoldIn
    from recgen.core.formats import INDEX_FILE, ITEM_FACTORS_FILE, ITEM_POPULARITY_FILE, SCORER_FILE
    from recgen.core.user_history import HALF_LIFE_DAYS, HISTORY_CAP, USERS_DIR, write_user_histories
    from recgen.repository import CatalogItem, Manifest, VersionWriter, write_catalog

    rng = np.random.default_rng(seed)
    n_clusters = 50
    cluster = rng.integers(0, n_clusters, n_items)
    pop = (rng.permutation(n_items) + 1 + 20.0) ** -1.0  # Zipf–Mandelbrot over shuffled ranks
    pop /= pop.sum()
    centroids = rng.standard_normal((n_clusters, FACTORS)).astype(np.float32)
    x = centroids[cluster] + 0.7 * rng.standard_normal((n_items, FACTORS)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    factors = (x * (0.05 + (pop / pop.max()) ** 0.5)[:, None]).astype(np.float32)  # norm ~ popularity

    # Users: log-normal activity (median 12, mean ~16, ≤ 200), items by popularity, 90 days of times.
    per_user = np.clip(np.round(np.exp(np.log(12.0) + 0.8 * rng.standard_normal(n_users))), 3, 200)
    user = np.repeat(np.arange(n_users, dtype=np.int64), per_user.astype(np.int64))
    item = np.minimum(np.searchsorted(np.cumsum(pop), rng.random(user.size)), n_items - 1)
    ts = 1.7e9 + rng.random(user.size) * 90 * 86400.0
    popularity = np.bincount(item, minlength=n_items).astype(np.float32)

    with VersionWriter(root) as w:
        genre = [GENRES[c % len(GENRES)] for c in cluster.tolist()]
        items = [CatalogItem(f"i{r}", f"Item {r}", categories=(genre[r],)) for r in range(n_items)]
        write_catalog(w.path / "catalog.jsonl", items)
        held = write_user_histories(w.path / USERS_DIR, [f"u{u}" for u in range(n_users)], user, item, ts)
        np.save(w.path / ITEM_FACTORS_FILE, factors)
        np.save(w.path / ITEM_POPULARITY_FILE, popularity)
        export_scorer(FACTORS, w.path / SCORER_FILE)
        # The export tunes on 2,000 users' vectors; 200 choose the kind here at a tenth of the cost
        # (exact search over 1M items, ~50 ms a query on one busy core, dominates the build).
        sample = rng.permutation(n_users)[:TUNING_QUERIES]
        queries = FoldIn(factors, REG).user_vectors([held.fold_in(int(u), ALPHA) for u in sample])
        index, choice = build_index(factors, queries, hnsw_m=None, head_shares=HEAD_SHARES)
        save_index(index, str(w.path / INDEX_FILE))
        mf = ALSParams(factors=FACTORS, reg=REG, alpha=ALPHA, iterations=0, seed=seed)
        manifest = Manifest(
            version=w.version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            dataset={
                "source": "synthetic (tools.bench.growth)",
                "fingerprint": f"growth-{n_users}-{n_items}-{seed}",
                "n_users": n_users,
                "n_items": n_items,
                "n_interactions": int(user.size),
            },
            dims={"factors": FACTORS},
            metrics={"index": choice.to_json()},
            params={
                "mf": mf.to_json(),
                "index": {"kind": choice.kind, **choice.params},
                "users": {
                    **held.counts(),
                    "history_cap": HISTORY_CAP,
                    "half_life_days": HALF_LIFE_DAYS,
                    "data_end": float(ts.max()),
                    "forgotten_through": 0.0,
                },
            },
        )
        return w.commit(manifest)


# In a fresh process: what loading the version costs a worker (its own load code: the fastest of
# three loads; the memory after the first), then the retrieval-only time of the same index the
# worker serves with, one query a call.
_PROBE = r"""
import json, sys, time
import numpy as np
from tools.harness.procfs import rss_kib
base = rss_kib("self")
from recgen.config import WorkerConfig
from worker.metrics import Metrics
from worker.model import LoadedModel
mods = rss_kib("self")
cfg = WorkerConfig(models=sys.argv[1], listen="unix:/dev/null", threads=int(sys.argv[2]))
t = time.perf_counter()
m = LoadedModel.load(cfg.models, None, cfg, Metrics())
load_s = time.perf_counter() - t
t = time.perf_counter()
m.warmup()
warmup_s = time.perf_counter() - t
rss_model = rss_kib("self") - mods
for _ in range(2):  # the fastest of three loads: one load on a shared machine is at the mercy of others
    del m
    t = time.perf_counter()
    m = LoadedModel.load(cfg.models, None, cfg, Metrics())
    load_s = min(load_s, time.perf_counter() - t)
from recgen.core.foldin import FoldIn
from recgen.core.formats import INDEX_FILE, ITEM_FACTORS_FILE
from worker.retrieval import Retriever
mf = m.version.manifest.params["mf"]
factors = np.load(m.version.file(ITEM_FACTORS_FILE))
fold = FoldIn(factors, float(mf["reg"]))
rng = np.random.default_rng(1)
n = len(m.users)
hists = [m.users.get(f"u{u}") for u in rng.integers(0, n, int(sys.argv[3]))]
alpha = float(mf["alpha"])
users = fold.user_vectors([(h.rows, (1.0 + alpha * h.weights).astype(np.float32)) for h in hists])
r = Retriever(m.version.file(INDEX_FILE), m.version.manifest.params["index"], int(sys.argv[2]))
times = []
for h, q in zip(hists, users):
    fetch = max(10, 50) + h.seen.size  # as Ranker._warm: the rerank pool plus what is excluded
    t = time.perf_counter()
    r.search(q[None, :], fetch)
    times.append(time.perf_counter() - t)
print(json.dumps({"load_s": load_s, "warmup_s": warmup_s, "rss_model_mib": rss_model / 1024,
                  "rss_imports_mib": (mods - base) / 1024, "index": r.kind, "retrieval_s": times}))
"""


def probe(version: Path, queries: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(version.parent), str(THREADS), str(queries)],
        cwd=ROOT,
        env=env(threads=THREADS),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"probe failed: {out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["retrieval_ms"] = latency_ms(res.pop("retrieval_s"), (("p50", 50), ("p99", 99)), stats=())
    return res


def _status_kib(pid: int, key: str) -> int:
    """One line of /proc/PID/status in KiB (RssAnon, RssFile ...); 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Served:
    """A running `recgen serve` (one worker) over one version, and the calls made to it."""

    def __init__(self, version: Path, n_users: int, work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        gw = Gateway(
            version.parent,
            work / "state.db",
            "--workers",
            "1",
            "--threads",
            str(THREADS),
            "--log-level",
            "WARNING",
            log_dir=work / "logs",
            environ=env(threads=THREADS),
        )
        try:
            self.gw = gw.start(timeout=900.0)
        except RuntimeError as e:  # the reason is in its log, which goes with the temporary directory
            log = work / "logs" / "serve.log"
            raise RuntimeError(f"{e}:\n{log.read_text()[-3000:] if log.is_file() else ''}") from e
        self.pids = [self.gw.pid, *self.gw.worker_pids()]
        self.n_users = n_users
        self.rng = np.random.default_rng(2)
        self.seq = 0
        self.raw: dict[str, dict[str, Any]] = {}  # phase -> {"lat": [...], "cpu": s, "wall": s, "errors"}

    def users(self, kind: str, n: int) -> list[str]:
        """n user ids: new ones (cold), or users whose history the version holds."""
        if kind == "held":
            return [f"u{u}" for u in self.rng.integers(0, self.n_users, n)]
        self.seq += n
        return [f"cold-{i}" for i in range(self.seq - n, self.seq)]

    def chunk(self, kind: str, concurrency: int, n: int) -> None:
        r = asyncio.run(_calls(self.gw.target, self.pids, self.users(kind, n), concurrency))
        acc = self.raw.setdefault(
            f"{kind}_c{concurrency}", {"lat": [], "cpu": 0.0, "wall": 0.0, "errors": {}}
        )
        acc["lat"] += r["lat"]
        acc.setdefault("chunk_p50_ms", []).append(
            round(float(np.median(r["lat"])) * 1e3, 3) if r["lat"] else 0.0
        )
        acc["cpu"] += r["cpu"]
        acc["wall"] += r["wall"]
        for k, v in r["errors"].items():
            acc["errors"][k] = acc["errors"].get(k, 0) + v

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"serve_ready_s": round(self.gw.started_s, 2)}
        for phase, a in self.raw.items():
            n = len(a["lat"])
            out[phase] = {
                "calls": n,
                "errors": a["errors"],
                "calls_per_s": round(n / max(a["wall"], 1e-9), 1),
                "cpu_us_per_call": round(a["cpu"] / max(1, n) * 1e6),
                "chunk_p50_ms": a.get("chunk_p50_ms", []),
                **(latency_ms(a["lat"], (("p50", 50), ("p99", 99)), stats=()) or {}),
            }
        out["worker_rss_mib"] = round(sum(rss_kib(p) for p in self.gw.worker_pids()) / 1024, 1)
        # Of which private (anonymous) and mapped from files: the held histories are memory-mapped,
        # and the pages a lookup maps (the kernel maps 64 KiB around a fault) are page cache.
        for kind in ("RssAnon", "RssFile"):
            out[f"worker_{kind}_mib"] = round(
                sum(_status_kib(p, kind) for p in self.gw.worker_pids()) / 1024, 1
            )
        out["gateway_rss_mib"] = round(rss_kib(self.gw.pid) / 1024, 1)
        return out

    def stop(self) -> None:
        self.gw.stop()


async def _calls(target: str, pids: list[int], users: list[str], concurrency: int) -> dict[str, Any]:
    """Recommend(k=10) for each of `users` in turn by `concurrency` callers: latencies, server CPU."""
    import grpc

    from recgen.v1 import recommender_pb2 as pb
    from recgen.v1 import recommender_pb2_grpc as pbg
    from tools.harness.load import closed_loop, connect

    chans = await connect(target, concurrency, 10.0)
    try:
        stubs = [pbg.RecommenderStub(c) for c in chans]
        for s in stubs:  # warm the connection and the code path, uncounted (a cold id stays cold)
            uid = users[0] + "-w" if users[0].startswith("cold-") else users[0]
            await s.Recommend(pb.RecommendRequest(user_id=uid, k=10), timeout=30)
        lat: list[float] = []
        errors: dict[str, int] = {}
        it = iter(users)

        async def send(stub: Any, t_sched: float) -> None:
            uid = next(it)
            try:
                await stub.Recommend(pb.RecommendRequest(user_id=uid, k=10), timeout=30)
                lat.append(time.perf_counter() - t_sched)
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] = errors.get(e.code().name, 0) + 1

        cpu0 = sum(cpu_s(p) for p in pids)
        t0 = time.perf_counter()
        await closed_loop(send, stubs, concurrency, limit=len(users))
        wall = time.perf_counter() - t0
        cpu = sum(cpu_s(p) for p in pids) - cpu0
    finally:
        for c in chans:
            await c.close()
    return {"lat": lat, "cpu": cpu, "wall": wall, "errors": errors}


def interleaved(ref: Served, this: Served | None, calls: int, concurrency: int, rounds: int) -> None:
    """Every phase (cold/held users x 1/`concurrency` callers) in `rounds` chunks, each chunk on
    the reference server and then on this one: the two see the same machine load, so their
    ratio holds even when other work on the machine comes and goes."""
    for kind in ("cold", "held"):
        for c in (1, concurrency):
            n = max(1, (calls if c == 1 else 2 * calls) // rounds)
            for _ in range(rounds):
                ref.chunk(kind, c, n)
                if this is not None:
                    this.chunk(kind, c, n)


def measure_point(
    n_users: int, n_items: int, ref: Served | None, calls: int, concurrency: int, rounds: int, work: Path
) -> dict[str, Any]:
    """Build, probe and serve one version; its calls interleaved with `ref`'s (None: it is the
    reference, measured alone; its server is returned in row["_served"] for the others)."""
    d = work / f"u{n_users}-i{n_items}"
    t = time.perf_counter()
    version = synthetic_version(d / "models", n_users, n_items)
    row: dict[str, Any] = {"users": n_users, "items": n_items, "build_s": round(time.perf_counter() - t, 1)}
    row["version_mib"] = round(sum(p.stat().st_size for p in version.rglob("*") if p.is_file()) / 2**20, 1)
    row.update(probe(version, calls))
    if ref is None:
        served = Served(version, n_users, d)
        interleaved(served, None, calls, concurrency, rounds)
        row.update(served.summary())
        row["_served"] = served
        return row
    ref.raw.clear()
    served = Served(version, n_users, d)
    try:
        interleaved(ref, served, calls, concurrency, rounds)
        row.update(served.summary())
        row["ref"] = ref.summary()
    finally:
        served.stop()
        shutil.rmtree(d, ignore_errors=True)
    return row


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y on log x; None when a value is not positive."""
    if len(xs) < 2 or min(ys) <= 0:
        return None
    return round(float(np.polyfit(np.log(xs), np.log(ys), 1)[0]), 3)


def _get(row: dict[str, Any], path: str) -> float:
    v: Any = row
    for k in path.split("."):
        v = v[k]
    return float(v)


# Served figures: their exponents come from the ratio to the reference (the series' smallest
# version) measured alongside, chunk by chunk; the others are single-process and absolute.
SERVED = (
    "held_c1.p50",
    "held_c1.p99",
    "held_cN.p50",
    "held_cN.p99",
    "held_c1.cpu_us_per_call",
    "held_cN.cpu_us_per_call",
    "cold_c1.p50",
    "cold_c1.p99",
    "cold_cN.p50",
    "cold_cN.p99",
    "cold_c1.cpu_us_per_call",
    "cold_cN.cpu_us_per_call",
)
ABSOLUTE = (
    "load_s",
    "rss_model_mib",
    "worker_rss_mib",
    "worker_RssAnon_mib",
    "worker_RssFile_mib",
    "retrieval_ms.p50",
    "retrieval_ms.p99",
)
NON_RETRIEVAL = "held_c1.p50_less_retrieval"


def _normalize(row: dict[str, Any], concurrency: int) -> None:
    """cN names for the `concurrency` phases (of the row and of its reference)."""
    for r in (row, row.get("ref", {})):
        for kind in ("cold", "held"):
            if f"{kind}_c{concurrency}" in r:
                r[f"{kind}_cN"] = r[f"{kind}_c{concurrency}"]


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Each row's served figures over its reference's in the same window (1.0 for the reference);
    NON_RETRIEVAL: held p50 less the retrieval-only p50, over the reference's (issue 18: the
    catalog's cost visible only in retrieval means this stays flat)."""
    ref_retrieval = rows[0]["retrieval_ms"]["p50"]
    out = []
    for r in rows:
        if "ref" not in r:
            out.append({s: 1.0 for s in (*SERVED, NON_RETRIEVAL)})
            continue
        x = {s: _get(r, s) / max(_get(r["ref"], s), 1e-9) for s in SERVED}
        for s in SERVED:  # p50: the median of the chunks' ratios, robust to a burst of other load
            phase, stat = s.split(".")
            if stat == "p50":
                x[s] = _chunk_ratio(r[phase]["chunk_p50_ms"], r["ref"][phase]["chunk_p50_ms"])
        x[NON_RETRIEVAL] = _chunk_ratio(
            r["held_c1"]["chunk_p50_ms"],
            r["ref"]["held_c1"]["chunk_p50_ms"],
            r["retrieval_ms"]["p50"],
            ref_retrieval,
        )
        out.append({k: round(v, 3) for k, v in x.items()})
    return out


def _chunk_ratio(mine: list[float], ref: list[float], less: float = 0.0, ref_less: float = 0.0) -> float:
    """Median over the interleaved chunks of (mine − less) / (ref − ref_less)."""
    assert mine and len(mine) == len(ref), (mine, ref)
    return float(np.median([(a - less) / max(b - ref_less, 1e-9) for a, b in zip(mine, ref, strict=True)]))


def growth(rows: list[dict[str, Any]], x: str) -> dict[str, float | None]:
    xs = [r[x] for r in rows]
    out = {s: slope(xs, [_get(r, s) for r in rows]) for s in ABSOLUTE}
    rs = ratios(rows)
    out.update({s: slope(xs, [q[s] for q in rs]) for s in (*SERVED, NON_RETRIEVAL)})
    return out


def goals(gu: dict[str, float | None], gi: dict[str, float | None]) -> list[dict[str, Any]]:
    """The issue-18 goals judged on the users (`gu`) and items (`gi`) series' exponents; each names
    the series and the figure its exponent is of (the bench's table shows that figure beside it)."""

    def flat(name: str, series: str, figure: str, e: float | None, why_missed: str) -> dict[str, Any]:
        met = e is not None and abs(e) <= FLAT
        if e is not None and e < -FLAT:  # cheaper at a larger size: no cost can do that, noise can
            why_missed = "falls with size: noise from other work on the machine, rerun on a quiet one"
        return {
            "goal": name,
            "series": series,
            "figure": figure,
            "exponent": e,
            "met": met,
            "reason": "" if met else why_missed,
        }

    return [
        flat(
            "Recommend p50 (users with history, 1 caller) flat in users",
            "users",
            "held_c1.p50",
            gu["held_c1.p50"],
            "latency grows with the number of held users",
        ),
        flat(
            "Recommend p50 (cold users, 1 caller) flat in users",
            "users",
            "cold_c1.p50",
            gu["cold_c1.p50"],
            "cold latency grows with the number of held users",
        ),
        flat(
            "Catalog cost only in retrieval: held Recommend p50 less retrieval-only p50 flat in items",
            "items",
            NON_RETRIEVAL,
            gi[NON_RETRIEVAL],
            "the non-retrieval part of a ranked answer grows with the catalog (per-request O(items) work "
            "outside the index)",
        ),
        flat(
            "Catalog cost only in retrieval: cold Recommend p50 (no retrieval) flat in items",
            "items",
            "cold_c1.p50",
            gi["cold_c1.p50"],
            "the cold path does O(items) work per request (a catalog-sized mask and popularity scan)",
        ),
    ]


def goal_lines(goals: list[dict[str, Any]]) -> list[str]:
    """One line per goal: MET or MISSED, the goal, its exponent, why it was missed."""
    return [
        f"{'MET   ' if g['met'] else 'MISSED'} {g['goal']}: exponent {g['exponent']} {g['reason']}".rstrip()
        for g in goals
    ]


def failures(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The sizes of a growth document that failed to build or serve (the others still count)."""
    return [f for s in ("users_series", "items_series") for f in (result.get(s) or {}).get("failed", [])]


def measure(sizes: Sizes, work: Path, command: str = "") -> dict[str, Any]:
    """The growth document (what `--json` writes; the bench stores it under "growth"): both series
    measured at `sizes` in versions under `work` (each removed once measured), every figure's
    exponent, and the goals judged on them. A size that fails is listed in its series' "failed"."""
    started = time.perf_counter()
    plan = (sizes.calls, sizes.concurrency, sizes.rounds)
    series = {
        "users": [(u, sizes.fixed_items) for u in sizes.users],
        "items": [(sizes.fixed_users, i) for i in sizes.items],
    }
    result: dict[str, Any] = {
        "command": command or "python -m tools.bench.growth " + " ".join(sizes.argv()),
        "cpus": os.cpu_count(),
        "threads": THREADS,
        "workers": 1,
        "flat_exponent": FLAT,
        "sizes": asdict(sizes),
    }
    refs: dict[tuple[int, int], dict[str, Any]] = {}  # a series' smallest version, kept serving
    try:
        for order, (name, keys) in enumerate(series.items()):
            t = time.perf_counter()
            if keys[0] not in refs:  # the same version may be both series' reference (--quick)
                refs[keys[0]] = measure_point(*keys[0], None, *plan, work)
                _normalize(refs[keys[0]], sizes.concurrency)
                print(f"{name}: {_line(refs[keys[0]])} [{time.perf_counter() - t:.0f} s]", flush=True)
            ref = refs[keys[0]]["_served"]
            rows = [{k: v for k, v in refs[keys[0]].items() if k != "_served"}]
            failed = []
            for key in keys[1:]:
                t = time.perf_counter()
                try:
                    rows.append(measure_point(*key, ref, *plan, work))
                except (RuntimeError, TimeoutError, OSError) as e:  # the other sizes still count
                    failed.append({"users": key[0], "items": key[1], "error": str(e)})
                    print(f"{name}: {key} FAILED: {e}", flush=True)
                    continue
                _normalize(rows[-1], sizes.concurrency)
                print(f"{name}: {_line(rows[-1])} [{time.perf_counter() - t:.0f} s]", flush=True)
            exps = growth(rows, name)
            result[f"{name}_series"] = {
                "rows": rows,
                "ratios": ratios(rows),
                "exponents": exps,
                "failed": failed,
            }
            _print_table(name, rows, exps)
            if all(later[0] != keys[0] for later in list(series.values())[order + 1 :]):
                refs.pop(keys[0])["_served"].stop()  # not a later series' reference: free it
    finally:
        for row in refs.values():
            row["_served"].stop()
    result["goals"] = goals(result["users_series"]["exponents"], result["items_series"]["exponents"])
    result["seconds"] = round(time.perf_counter() - started)
    result["load_avg_end"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.growth", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1K and 10K only, few calls (a test's run)")
    ap.add_argument("--users", default=_csv(FULL.users))
    ap.add_argument("--items", default=_csv(FULL.items))
    ap.add_argument(
        "--fixed-items", type=int, default=FULL.fixed_items, help="catalog size of the users series"
    )
    ap.add_argument(
        "--fixed-users", type=int, default=FULL.fixed_users, help="held users of the catalog series"
    )
    ap.add_argument("--calls", type=int, default=FULL.calls, help="Recommend calls per phase at 1 caller")
    ap.add_argument("--concurrency", type=int, default=FULL.concurrency)
    ap.add_argument(
        "--rounds", type=int, default=FULL.rounds, help="chunks per phase, alternating with the reference"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    sizes = Sizes(
        tuple(int(u) for u in args.users.split(",")),
        tuple(int(i) for i in args.items.split(",")),
        args.fixed_items,
        args.fixed_users,
        args.calls,
        args.concurrency,
        args.rounds,
    )
    if args.quick:
        sizes = replace(
            QUICK,
            calls=min(args.calls, QUICK.calls),
            concurrency=args.concurrency,
            rounds=min(args.rounds, QUICK.rounds),
        )
    command = "python -m tools.bench.growth " + " ".join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="recgen-growth-") as tmp:
        result = measure(sizes, Path(tmp), command)
    for line in goal_lines(result["goals"]):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if failures(result) else 0


def _csv(xs: tuple[int, ...]) -> str:
    return ",".join(str(x) for x in xs)


def _line(row: dict[str, Any]) -> str:
    ref = row.get("ref")
    vs = (
        ""
        if ref is None
        else f" (reference alongside: held {ref['held_c1']['p50']}, cold {ref['cold_c1']['p50']})"
    )
    return (
        f"{row['users']:,} users, {row['items']:,} items: built in {row['build_s']} s, "
        f"load {row['load_s']:.2f} s, "
        f"p50 held {row['held_c1']['p50']} ms, cold {row['cold_c1']['p50']} ms{vs}, "
        f"retrieval-only {row['retrieval_ms']['p50']} ms ({row['index']})"
    )


def _print_table(x: str, rows: list[dict[str, Any]], exps: dict[str, float | None]) -> None:
    """Absolute figures per size; served ones also as the ratio to the reference alongside."""
    rs = ratios(rows)
    print(f"\n{x} series: ms, µs of server CPU per call, MiB, s; [ratio to the reference alongside]")
    print(f"{'':<27}" + "".join(f"{r[x]:>20,}" for r in rows) + f"{'exponent':>10}")
    for s in (*ABSOLUTE, *SERVED, NON_RETRIEVAL):
        cells = []
        for r, q in zip(rows, rs, strict=True):
            v = "" if s == NON_RETRIEVAL else f"{_get(r, s):.4g}"
            cells.append(f"{v} [{q[s]:.2f}]" if s in q else v)
        e = exps[s]
        print(f"{s:<27}" + "".join(f"{c:>20}" for c in cells) + ("" if e is None else f"{e:>10.3f}"))


if __name__ == "__main__":
    raise SystemExit(main())
