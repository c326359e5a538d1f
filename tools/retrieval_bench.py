"""Retrieval benchmark: the index `export.index.build_index` chooses versus exact search.

For each catalog size: the index is chosen and tuned by `build_index` on one
set of held-out users' fold-in vectors (`tune`: exact, norm-bounded at each
head share, HNSW at rising efSearch), and measured on another (`eval`,
never seen by the tuning): recall@100 against
exact inner-product search (`faiss.IndexFlatIP`, the baseline), and queries/s
of both at batch 1 (FAISS with 1 OpenMP thread: a single query is slower
with 2, STACK.md) and in batches of 64 (the worker's max_batch; FAISS with
`threads` OpenMP threads). Thread counts are set explicitly before every
measurement.

    python -m tools.retrieval_bench --sizes 100000,1000000 --out /tmp/retrieval.json

Runs in its own process (the orchestrator, tools/bench/, starts it), so
the memory it takes is returned when it ends. With --save-dir the largest
catalog's factors and index are saved and `tools.memory hold` measures the
resident memory of a fresh process that holds just them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from export.index import (
    EXACT_MAX_ITEMS,
    HEAD_SHARES,
    RECALL_K,
    build_index,
    recall_at,
    save_index,
)
from recgen.core.index_types import NormBounded, mips_queries
from tools.synthetic_catalog import (
    SyntheticConfig,
    extend_catalog,
    fit_catalog,
    make_universe,
    user_queries,
)

LOG = logging.getLogger(__name__)

BATCH = 64  # the worker's default max_batch


Searchable = faiss.Index | NormBounded


def _search_all(index: Searchable, q: np.ndarray, k: int, batch: int) -> np.ndarray:
    out = []
    for s in range(0, len(q), batch):
        _, ids = index.search(q[s : s + batch], k)
        out.append(ids)
    return np.concatenate(out)


def queries_per_s(
    index: Searchable, q: np.ndarray, k: int, *, batch: int, threads: int, min_time: float = 0.5
) -> float:
    """Queries/s of `index` on `q` in batches of `batch`, FAISS with `threads` OpenMP threads; repeats
    the pass until `min_time` seconds have elapsed (one warm-up batch first)."""
    faiss.omp_set_num_threads(threads)
    index.search(q[:batch], k)
    done, t0 = 0, time.perf_counter()
    while True:
        _search_all(index, q, k, batch)
        done += len(q)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return done / elapsed


@contextlib.contextmanager
def _capture_hnsw() -> Iterator[list[faiss.Index]]:
    """Keep a handle on the HNSW index export.index.build_index builds (it drops it when it falls back
    to exact search), so its recall/speed curve can be measured without building it twice."""
    built: list[faiss.Index] = []
    original = faiss.IndexHNSWFlat

    def make(*args: Any) -> faiss.Index:
        idx = original(*args)
        built.append(idx)
        return idx

    faiss.IndexHNSWFlat = make  # type: ignore[misc,assignment]
    try:
        yield built
    finally:
        faiss.IndexHNSWFlat = original  # type: ignore[misc]


def hnsw_curve(
    index: faiss.Index,
    q_l2: np.ndarray,
    truth: np.ndarray,
    k: int,
    threads: int,
    row: dict[str, Any],
    min_time: float = 0.3,
) -> list[dict[str, float]]:
    """recall@k and batched / batch-1 queries/s of an HNSW index at increasing efSearch."""
    out = []
    single = q_l2[: min(100, len(q_l2))]
    for ef in (64, 128, 256, 512, 1024, 2048, 4096):
        index.hnsw.efSearch = ef  # type: ignore[attr-defined]
        faiss.omp_set_num_threads(threads)
        rec = recall_at(_search_all(index, q_l2, k, BATCH), truth)
        qps_b = queries_per_s(index, q_l2, k, batch=BATCH, threads=threads, min_time=min_time)
        qps_1 = queries_per_s(index, single, k, batch=1, threads=1, min_time=min_time)
        out.append(
            {
                "efSearch": ef,
                "recall_at_100": round(rec, 4),
                "qps_batched": round(qps_b, 1),
                "qps_batch1": round(qps_1, 1),
                "speedup_batched": round(qps_b / row["exact_qps_batched"], 2),
                "speedup_batch1": round(qps_1 / row["exact_qps_batch1"], 2),
            }
        )
        LOG.info("HNSW curve: %s", out[-1])
        if rec >= 0.99 or qps_b < 0.5 * row["exact_qps_batched"]:
            break
    return out


def norm_concentration(xb: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Share of the exact top-100 answers that are among the x % of items with the largest norms: with
    popularity skew, inner-product answers concentrate on high-norm (popular) items."""
    norms = np.linalg.norm(xb, axis=1)
    rank = np.empty(len(norms), dtype=np.int64)
    rank[np.argsort(-norms)] = np.arange(len(norms))
    ranks = rank[truth[truth >= 0]]
    return {f"top_{p}pct": round(float((ranks < len(norms) * p / 100).mean()), 4) for p in (1, 5, 10, 20, 50)}


def norm_bounded(
    exact: faiss.IndexFlat,
    q: np.ndarray,
    truth: np.ndarray,
    k: int,
    frac: float,
    *,
    threads: int,
    min_time: float,
    row: dict[str, Any],
) -> dict[str, Any]:
    """The served norm-bounded index (worker.retrieval.NormBounded) at one head share, on the eval
    users: what build_index weighed on the tuning users, for every share it tried."""
    nb = NormBounded(exact, int(exact.ntotal * frac))
    faiss.omp_set_num_threads(threads)
    found = _search_all(nb, q, k, BATCH)
    fallback_share = nb.fallback_queries / max(nb.queries, 1)
    single = q[: min(200, len(q))]
    qps_b = queries_per_s(nb, q, k, batch=BATCH, threads=threads, min_time=min_time)
    qps_1 = queries_per_s(nb, single, k, batch=1, threads=1, min_time=min_time)
    out = {
        "head_share": frac,
        "head_items": len(nb.head_rows),
        "recall_at_100": round(recall_at(found, truth), 4),
        "fallback_share": round(fallback_share, 4),
        "qps_batched": round(qps_b, 1),
        "qps_batch1": round(qps_1, 1),
        "speedup_batched": round(qps_b / row["exact_qps_batched"], 2),
        "speedup_batch1": round(qps_1 / row["exact_qps_batch1"], 2),
    }
    LOG.info("norm-bounded exact search: %s", out)
    return out


def bench_catalog(
    name: str,
    item_factors: np.ndarray,
    tune_q: np.ndarray,
    eval_q: np.ndarray,
    *,
    recall_target: float = 0.95,
    exact_max_items: int | None = None,
    threads: int = 2,
    single_queries: int = 200,
    min_time: float = 0.5,
) -> dict[str, Any]:
    """Build the chosen index, then recall@100 and queries/s of it and of exact search on eval_q."""
    xb = np.ascontiguousarray(item_factors, dtype=np.float32)
    n, d = xb.shape
    k = min(RECALL_K, n)
    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    limit = EXACT_MAX_ITEMS if exact_max_items is None else exact_max_items
    with _capture_hnsw() as built:
        index, choice = build_index(xb, tune_q, recall_target=recall_target, exact_max_items=limit)
    build_s = time.perf_counter() - t
    exact = faiss.IndexFlatIP(d)
    exact.add(xb)
    faiss.omp_set_num_threads(threads)
    _, truth = exact.search(eval_q, k)
    mips = choice.kind == "hnsw"
    q_idx = mips_queries(eval_q) if mips else eval_q
    if isinstance(index, NormBounded):
        index.queries = index.fallback_queries = 0
    found = _search_all(index, q_idx, k, BATCH)
    rec = recall_at(found, truth)
    single = slice(0, min(single_queries, len(eval_q)))
    row: dict[str, Any] = {
        "name": name,
        "items": n,
        "dim": d,
        "index": choice.kind,
        "params": choice.params,
        "build_and_tune_s": round(build_s, 1),
        "recall_at_100_tune": round(choice.recall_at_100, 4),
        "recall_at_100": round(rec, 4),
        "tune_queries": len(tune_q),
        "eval_queries": len(eval_q),
        "threads_batch1": 1,
        "threads_batched": threads,
        "batch": BATCH,
    }
    if isinstance(index, NormBounded):
        row["fallback_share"] = round(index.fallback_queries / max(index.queries, 1), 4)
    for label, idx, qq in (("exact", exact, eval_q), ("index", index, q_idx)):
        if label == "index" and choice.kind == "flat":
            # The chosen index is exact search itself: one measurement, ratio 1 (two runs of the same
            # search would only show the machine's noise).
            row["index_qps_batch1"], row["index_qps_batched"] = (
                row["exact_qps_batch1"],
                row["exact_qps_batched"],
            )
            break
        row[f"{label}_qps_batch1"] = round(
            queries_per_s(idx, qq[single], k, batch=1, threads=1, min_time=min_time), 1
        )
        row[f"{label}_qps_batched"] = round(
            queries_per_s(idx, qq, k, batch=BATCH, threads=threads, min_time=min_time), 1
        )
    row["speedup_batch1"] = round(row["index_qps_batch1"] / row["exact_qps_batch1"], 2)
    row["speedup_batched"] = round(row["index_qps_batched"] / row["exact_qps_batched"], 2)
    if built:
        # The HNSW build_index built (and kept, or rejected for missing the target): its whole
        # recall/speed curve on the eval users, to show what any efSearch would give.
        row["hnsw_curve"] = hnsw_curve(
            built[0], mips_queries(eval_q), truth, k, threads, row, min(min_time, 0.3)
        )
    row["norm_concentration"] = norm_concentration(xb, truth)
    row["norm_bounded"] = [
        norm_bounded(exact, eval_q, truth, k, frac, threads=threads, min_time=min(min_time, 0.3), row=row)
        for frac in HEAD_SHARES
        if k <= int(frac * n) < n
    ]
    LOG.info("%s: %s", name, row)
    return row | {"_index": index}


def run(
    sizes: list[int],
    *,
    cfg: SyntheticConfig,
    n_queries: int = 1000,
    threads: int = 2,
    also_hnsw_small: bool = True,
    save_dir: Path | None = None,
    single_queries: int = 200,
    min_time: float = 0.5,
) -> dict[str, Any]:
    """The synthetic catalog (fit at cfg.n_fit items, extended to the largest size) and one row per
    size. Sizes other than cfg.n_fit and cfg.n_universe are not supported (they are the two catalogs)."""
    for s in sizes:
        if s not in (cfg.n_fit, cfg.n_universe):
            raise ValueError(f"size {s}: only n_fit={cfg.n_fit} and n_universe={cfg.n_universe}")
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    uni = make_universe(cfg, rng)
    fit = fit_catalog(cfg, uni, rng)
    out: dict[str, Any] = {"synthetic": cfg.to_json(), "rows": []}
    for size in sorted(sizes):
        if size == cfg.n_fit:
            catalog, factors = fit.items, fit.item_factors
        else:
            factors = extend_catalog(cfg, uni, fit, rng)
            catalog = np.arange(cfg.n_universe)
        t = time.perf_counter()
        q = user_queries(cfg, uni, catalog, factors, 2 * n_queries, rng)
        LOG.info("%d held-out users folded in in %.1f s", len(q), time.perf_counter() - t)
        tune_q, eval_q = q[:n_queries], q[n_queries:]
        name = f"{size // 1000}K" if size < 1_000_000 else f"{size // 1_000_000}M"
        row = bench_catalog(
            name,
            factors,
            tune_q,
            eval_q,
            threads=threads,
            single_queries=single_queries,
            min_time=min_time,
        )
        index = row.pop("_index")
        out["rows"].append(row)
        if also_hnsw_small and "measured" not in row["params"]:
            # The policy picks exact search up to export.index.EXACT_MAX_ITEMS without measuring; what
            # the measured choice (norm-bounded, HNSW) would give there, for reference.
            alt = bench_catalog(
                name + " (measured choice forced)",
                factors,
                tune_q,
                eval_q,
                exact_max_items=0,
                threads=threads,
                single_queries=single_queries,
                min_time=min_time,
            )
            alt.pop("_index")
            alt["chosen_by_policy"] = False
            alt["name"] = name + " (measured choice forced)"
            out["rows"].append(alt)
        if save_dir is not None:
            d = save_dir / name
            d.mkdir(parents=True, exist_ok=True)
            np.save(d / "item_factors.npy", factors)
            save_index(index, str(d / "items.faiss"))
            np.save(d / "queries.npy", eval_q)
            np.save(d / "tune_queries.npy", tune_q)
            (d / "params.json").write_text(json.dumps(row["params"]))
            row["saved_to"] = str(d)
        del index
    out["fit_stats"] = fit.stats
    out["total_s"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.retrieval_bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        default="100000,1000000",
        help="catalog sizes: the fitted one (the smallest) and, optionally, the universe",
    )
    p.add_argument("--universe", type=int, default=1_000_000, help="items in the item universe")
    p.add_argument("--users", type=int, default=50_000, help="users in the ALS fit")
    p.add_argument("--iterations", type=int, default=6, help="ALS iterations")
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000, help="held-out users per set (tune, eval)")
    p.add_argument("--threads", type=int, default=2, help="FAISS OpenMP threads for batched search")
    p.add_argument(
        "--no-hnsw-small",
        action="store_true",
        help="skip the measured-choice reference row where the policy picks exact unmeasured",
    )
    p.add_argument("--save-dir", type=Path, default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    sizes = sorted(int(s) for s in args.sizes.split(",") if s)
    cfg = SyntheticConfig(
        n_universe=max(args.universe, max(sizes)),
        n_fit=min(sizes),
        n_users=args.users,
        factors=args.factors,
        iterations=args.iterations,
        seed=args.seed,
    )
    res = run(
        sizes,
        cfg=cfg,
        n_queries=args.queries,
        threads=args.threads,
        also_hnsw_small=not args.no_hnsw_small,
        save_dir=args.save_dir,
    )
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
