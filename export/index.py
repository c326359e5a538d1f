"""Candidate retrieval index over item factors (FAISS, inner product), chosen by measurement.

Small catalogs (≤ exact_max_items) get exact search (IndexFlatIP): fast enough, never misses.
Larger ones get whichever candidate answers the tuning queries fastest, measured in the worker's
batch size *with user vectors as queries* (item vectors as queries flatter an index: each finds
itself), among those whose recall@100 against exact search meets the target:
- exact search itself;
- norm-bounded exact search (recgen.core.index_types.NormBounded) at several head shares: exact search
  over the items with the largest norms, certified per query by Cauchy–Schwarz, the uncertified
  queries searched over the whole catalog. Its recall is that of exact search. MF factor norms
  follow popularity, and the answers to user queries concentrate on high-norm items, so a small
  head certifies most queries;
- HNSW over items lifted to d+1 dimensions where L2 order equals inner-product order (Bachrach et
  al. 2014): x' = [x, √(M² − |x|²)], q' = [q, 0] (recgen.core.index_types), efSearch raised until the
  target is met. HNSW's graph assumes a metric, and inner product is not one.
What was measured is returned for the manifest. Does not filter seen items (the worker does).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from recgen.core.formats import INDEX_FLAT, INDEX_HNSW, INDEX_NORM_BOUNDED
from recgen.core.index_types import NormBounded, mips_items, mips_queries

LOG = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 200_000  # below this, exact search answers a batch in well under 10 ms
RECALL_K = 100
HEAD_SHARES = (0.005, 0.01, 0.02, 0.05, 0.10, 0.20)  # norm-bounded head sizes tried, share of items
MEASURE_BATCH = 64  # the worker's default max_batch: throughput is measured in its batches


@dataclass
class IndexChoice:
    kind: str  # INDEX_FLAT | INDEX_NORM_BOUNDED | INDEX_HNSW (worker.retrieval.Retriever loads each)
    params: dict[str, Any] = field(default_factory=dict)
    recall_at_100: float = 1.0
    queries_per_s: float = 0.0
    exact_queries_per_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


Searchable = faiss.Index | NormBounded


def _qps(
    index: Searchable, queries: np.ndarray, k: int, batch: int, min_time: float = 0.2
) -> tuple[float, np.ndarray]:
    """Queries/s over `queries` in batches of `batch`, passes repeated until `min_time` seconds (a
    short pass is at the mercy of one preemption on a shared machine), and the rows found."""
    out = []
    done, t = 0, time.perf_counter()
    while True:
        for s in range(0, len(queries), batch):
            found = index.search(queries[s : s + batch], k)[1]
            if not done:
                out.append(found)
        done += len(queries)
        elapsed = time.perf_counter() - t
        if elapsed >= min_time:
            return done / max(elapsed, 1e-9), np.concatenate(out)


def _norm_bounded_candidates(
    flat: faiss.IndexFlat, xq: np.ndarray, truth: np.ndarray, k: int, shares: tuple[float, ...], batch: int
) -> list[tuple[NormBounded, dict[str, Any]]]:
    n = int(flat.ntotal)
    out = []
    for share in shares:
        m = int(n * share)
        if m < k or m >= n:  # a head without k items certifies nothing; the whole catalog is exact
            continue
        nb = NormBounded(flat, m)
        qps, ids = _qps(nb, xq, k, batch)
        row = {
            "head_share": share,
            "head_items": m,
            "tail_max_norm": round(nb.tail_max, 6),
            "fallback_share": round(nb.fallback_queries / max(nb.queries, 1), 4),
            "recall_at_100": round(recall_at(ids, truth), 4),
            "queries_per_s": round(qps, 1),
        }
        LOG.info("norm-bounded head %.1f %%: %s", 100 * share, row)
        out.append((nb, row))
    return out


def _hnsw_candidate(
    xb: np.ndarray,
    xq: np.ndarray,
    truth: np.ndarray,
    k: int,
    m: int,
    target: float,
    beat_qps: float,
    batch: int,
) -> tuple[faiss.Index, dict[str, Any]]:
    """HNSW with efSearch raised until recall meets `target`; it stops early once slower than
    `beat_qps`, since a larger efSearch is only slower still."""
    hnsw = faiss.IndexHNSWFlat(xb.shape[1] + 1, m, faiss.METRIC_L2)
    hnsw.hnsw.efConstruction = 200
    t = time.perf_counter()
    hnsw.add(mips_items(xb))
    LOG.info("HNSW%d over %d items built in %.1f s", m, len(xb), time.perf_counter() - t)
    xq_l2 = mips_queries(xq)
    row: dict[str, Any] = {}
    for ef in (64, 128, 256, 512, 1024, 2048):
        hnsw.hnsw.efSearch = ef
        qps, ids = _qps(hnsw, xq_l2, k, batch)
        rec = recall_at(ids, truth)
        LOG.info("HNSW efSearch=%d recall@%d=%.4f %.0f q/s", ef, k, rec, qps)
        row = {"M": m, "efSearch": ef, "mips_to_l2": True, "recall_at_100": round(rec, 4)}
        row["queries_per_s"] = round(qps, 1)
        if rec >= target or qps < beat_qps:
            break
    hnsw.hnsw.efSearch = row["efSearch"]
    return hnsw, row


EXACT_IS_ENOUGH = 10.0  # speed-up over brute force at which an exact candidate ends the search


def build_index(
    item_factors: np.ndarray,
    user_queries: np.ndarray,
    *,
    recall_target: float = 0.95,
    exact_max_items: int = EXACT_MAX_ITEMS,
    hnsw_m: int | None = 32,
    head_shares: tuple[float, ...] = HEAD_SHARES,
    batch: int = MEASURE_BATCH,
) -> tuple[Searchable, IndexChoice]:
    """The index to serve and what was measured. Above exact_max_items the fastest candidate (on
    `user_queries`, in batches of `batch`, at the caller's FAISS thread count) whose recall@100 meets
    `recall_target` wins; exact search is always a candidate. hnsw_m=None skips HNSW."""
    xb = np.ascontiguousarray(item_factors, dtype=np.float32)
    xq = np.ascontiguousarray(user_queries, dtype=np.float32)
    n, d = xb.shape
    flat = faiss.IndexFlatIP(d)
    flat.add(xb)
    k = min(RECALL_K, n)
    _, truth = flat.search(xq, k)
    exact_qps, _ = _qps(flat, xq, k, batch)
    if n <= exact_max_items:
        return flat, IndexChoice(INDEX_FLAT, {}, 1.0, exact_qps, exact_qps)

    found: list[tuple[Searchable, IndexChoice]] = [
        (flat, IndexChoice(INDEX_FLAT, {}, 1.0, exact_qps, exact_qps))
    ]
    measured: dict[str, Any] = {"exact_queries_per_s": round(exact_qps, 1), "batch": batch}
    nbs = _norm_bounded_candidates(flat, xq, truth, k, head_shares, batch)
    measured["norm_bounded"] = [row for _, row in nbs]
    for nb, row in nbs:
        if row["recall_at_100"] >= recall_target:
            params = {
                key: row[key] for key in ("head_items", "head_share", "tail_max_norm", "fallback_share")
            }
            found.append(
                (nb, IndexChoice(INDEX_NORM_BOUNDED, params, row["recall_at_100"], row["queries_per_s"]))
            )
    best_qps = max(c.queries_per_s for _, c in found)
    if hnsw_m is not None and best_qps >= EXACT_IS_ENOUGH * exact_qps:
        # An exact answer this much faster than brute force leaves an approximate index little
        # to win, and building HNSW over a million items takes 10-20 minutes on two cores.
        LOG.info("exact norm-bounded search at %.0fx brute force: HNSW not built", best_qps / exact_qps)
        measured["hnsw"] = "skipped: an exact candidate reached %.0fx exact" % (best_qps / exact_qps)
        hnsw_m = None
    if hnsw_m is not None:
        hnsw, row = _hnsw_candidate(xb, xq, truth, k, hnsw_m, recall_target, best_qps, batch)
        measured["hnsw"] = row
        if row["recall_at_100"] >= recall_target:
            params = {key: row[key] for key in ("M", "efSearch", "mips_to_l2")}
            found.append((hnsw, IndexChoice(INDEX_HNSW, params, row["recall_at_100"], row["queries_per_s"])))
        else:
            LOG.info(
                "HNSW missed recall target %.3f (%.4f): not a candidate", recall_target, row["recall_at_100"]
            )
    index, choice = max(found, key=lambda c: c[1].queries_per_s)
    choice.exact_queries_per_s = exact_qps
    choice.params["measured"] = measured
    LOG.info(
        "index %s %s: %.0f q/s, %.1fx exact, recall@%d %.4f",
        choice.kind,
        {key: v for key, v in choice.params.items() if key != "measured"},
        choice.queries_per_s,
        choice.queries_per_s / exact_qps,
        k,
        choice.recall_at_100,
    )
    return index, choice


def save_index(index: Searchable, path: str) -> None:
    """items.faiss: the FAISS index; for norm-bounded search the exact index over all items (the
    worker rebuilds the head from it: the head_items largest-norm rows)."""
    faiss.write_index(index.full if isinstance(index, NormBounded) else index, path)
