"""Sharded catalogs on a synthetic catalog of millions of items: exactness and latency.

A realistic MF catalog (tools/synthetic_catalog.py: popularity skew, taste clusters, iALS
factors) is split into N shards as `recgen worker --shard I/N` splits it (row % N == I,
each shard's index rebuilt by worker.retrieval.Retriever.keep_shard, the same code path).
For held-out users' fold-in vectors it measures, in the same run and interleaved query by
query so that machine noise hits all alike:

- recall@k of the merged shards' top k (recgen/core/shard_merge.merge, as the gateway merges)
  against the single index's top k: 1.0 expected with the exact kinds;
- batch-1 search latency of the single index, of every shard, and of the merge;
- the projection when the shards run on separate hosts in parallel: per query, the
  slowest shard plus the merge (the network hop is not in it: docs/scaling.md has
  its measured cost).

It does not start workers or a gateway (tests/e2e/test_sharded.py does) and says nothing
about throughput: one process, one thread, one query at a time.

    .venv/bin/python -m tools.shard_bench --items 2000000 --factors 32 --shards 2 4
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recgen.core.shard_merge import Candidate, ShardAnswer, merge
from tools.harness.percentiles import latency_ms
from tools.synthetic_catalog import SyntheticConfig, extend_catalog, fit_catalog, make_universe, user_queries
from worker.retrieval import Retriever

LOG = logging.getLogger("shard_bench")


def build_catalog(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) item factors and (q, d) query user vectors, cached under --cache if given."""
    cache = Path(args.cache) / f"shards-{args.items}x{args.factors}-s{args.seed}.npz" if args.cache else None
    if cache is not None and cache.is_file():
        z = np.load(cache)
        return z["factors"], z["queries"][: args.queries]
    cfg = SyntheticConfig(
        n_universe=args.items,
        n_fit=args.fit_items,
        n_users=args.fit_users,
        factors=args.factors,
        iterations=args.iterations,
        seed=args.seed,
    )
    rng = np.random.default_rng(args.seed)
    uni = make_universe(cfg, rng)
    fit = fit_catalog(cfg, uni, rng)
    factors = extend_catalog(cfg, uni, fit, rng)
    queries = user_queries(cfg, uni, np.arange(args.items), factors, args.queries, rng)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, factors=factors, queries=queries)
    return factors, queries


def retriever(path: Path, params: dict[str, Any], factors: np.ndarray, shard: tuple[int, int]) -> Retriever:
    r = Retriever(path, params, threads=1)
    if shard[1] > 1:
        r.keep_shard(factors, *shard)
    return r


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile in ms of latencies in seconds."""
    summary = latency_ms(xs, (("q", q),), stats=())
    assert summary is not None, "no latencies"
    return summary["q"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    factors, queries = build_catalog(args)
    n, d = factors.shape
    LOG.info("catalog %d x %d, %d queries, built in %.0f s", n, d, len(queries), time.perf_counter() - t0)
    k = args.k
    out: dict[str, Any] = {"items": n, "factors": d, "queries": len(queries), "k": k, "kinds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "items.faiss"
        flat = faiss.IndexFlatIP(d)
        flat.add(np.ascontiguousarray(factors))
        faiss.write_index(flat, str(path))
        del flat
        for kind in args.kinds:
            params = {"kind": kind, "head_items": int(n * args.head_share)}
            single = retriever(path, params, factors, (0, 1))
            shards: dict[int, list[Retriever]] = {}
            build_s: dict[int, float] = {}
            for ns in args.shards:
                t = time.perf_counter()
                shards[ns] = [retriever(path, params, factors, (i, ns)) for i in range(ns)]
                build_s[ns] = round(time.perf_counter() - t, 2)
            lat: dict[str, list[float]] = {"single": []}
            recall: dict[int, list[float]] = {ns: [] for ns in args.shards}
            for ns in args.shards:
                lat |= {f"{ns}:max": [], f"{ns}:mean": [], f"{ns}:merge": [], f"{ns}:parallel": []}
            for qi in range(len(queries)):
                q = queries[qi : qi + 1]
                t = time.perf_counter()
                _, truth = single.search(q, k)
                lat["single"].append(time.perf_counter() - t)
                for ns, rs in shards.items():
                    answers, times = [], []
                    for r in rs:
                        t = time.perf_counter()
                        ip, rows = r.search(q, k)
                        times.append(time.perf_counter() - t)
                        answers.append(
                            ShardAnswer(
                                [
                                    Candidate(int(a), float(s), float(s))
                                    for a, s in zip(rows[0], ip[0], strict=True)
                                ]
                            )
                        )
                    t = time.perf_counter()
                    picked = merge(answers, k)
                    t_merge = time.perf_counter() - t
                    got = {answers[s].items[i].row for s, i, _ in picked}
                    recall[ns].append(len(got & set(truth[0].tolist())) / k)
                    lat[f"{ns}:max"].append(max(times))
                    lat[f"{ns}:mean"].append(sum(times) / ns)
                    lat[f"{ns}:merge"].append(t_merge)
                    lat[f"{ns}:parallel"].append(max(times) + t_merge)
            base = float(np.median(lat["single"]))
            rows_out = [{"shards": 1, "p50_ms": pct(lat["single"], 50), "p99_ms": pct(lat["single"], 99)}]
            for ns in args.shards:
                par = float(np.median(lat[f"{ns}:parallel"]))
                rows_out.append(
                    {
                        "shards": ns,
                        "recall_at_k": round(float(np.mean(recall[ns])), 6),
                        "min_recall_at_k": round(float(np.min(recall[ns])), 6),
                        "shard_p50_ms": pct(lat[f"{ns}:mean"], 50),
                        "slowest_shard_p50_ms": pct(lat[f"{ns}:max"], 50),
                        "merge_p50_ms": pct(lat[f"{ns}:merge"], 50),
                        "parallel_p50_ms": pct(lat[f"{ns}:parallel"], 50),
                        "parallel_p99_ms": pct(lat[f"{ns}:parallel"], 99),
                        "speedup_parallel": round(base / par, 2),
                        "shard_build_s": build_s[ns],
                        "items_per_shard": int(shards[ns][0].ntotal),
                    }
                )
            out["kinds"][kind] = rows_out
            LOG.info("%s: %s", kind, json.dumps(rows_out))
            del single, shards
    out["memory_mb_per_worker"] = {
        str(ns): {
            "item_factors": round(n * d * 4 / 2**20, 1),  # every worker: fold-in reads any history item
            "shard_index": round(n * d * 4 / ns / 2**20, 1),  # flat storage of the owned rows
        }
        for ns in [1, *args.shards]
    }
    out["total_s"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=2_000_000)
    p.add_argument("--factors", type=int, default=32)
    p.add_argument("--fit-items", type=int, default=50_000, help="items of the iALS fit (the rest folded in)")
    p.add_argument("--fit-users", type=int, default=25_000)
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--shards", type=int, nargs="+", default=[2, 4])
    p.add_argument("--kinds", nargs="+", default=["flat", "norm_bounded"], choices=["flat", "norm_bounded"])
    p.add_argument("--head-share", type=float, default=0.05, help="norm-bounded head: share of the catalog")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="directory to keep the built catalog in between runs")
    p.add_argument("--out", default=None, help="write the JSON result here too")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    faiss.omp_set_num_threads(1)  # batch-1 latency: one thread is faster (STACK.md)
    res = run(args)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
