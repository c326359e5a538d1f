"""Candidate retrieval index over item factors (FAISS, inner product).

Small catalogs get exact search (IndexFlatIP): it is fast enough and never
misses. Large ones get HNSW, with efSearch chosen by measuring recall@100
against exact search *with user vectors as queries* (item vectors as queries
flatter an index: each finds itself) until the target is met. HNSW's graph
assumes a metric, and inner product is not one (recall stalls near 0.8 on
clustered MF factors), so items are lifted to d+1 dimensions where L2 order
equals inner-product order (Bachrach et al. 2014): x' = [x, √(M² − |x|²)],
q' = [q, 0]. `mips_queries` applies the query side. The choice and
its measured recall are returned for the manifest. Does not filter seen
items (the worker does).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

LOG = logging.getLogger(__name__)

EXACT_MAX_ITEMS = 200_000  # below this, exact search answers a batch in well under 10 ms
RECALL_K = 100


@dataclass
class IndexChoice:
    kind: str  # "flat" | "hnsw"
    params: dict[str, Any] = field(default_factory=dict)
    recall_at_100: float = 1.0
    queries_per_s: float = 0.0
    exact_queries_per_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def mips_items(x: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d+1) with equal norms M: L2 nearest = largest inner product."""
    norms2 = (x.astype(np.float64) ** 2).sum(axis=1)
    extra = np.sqrt(np.maximum(norms2.max() - norms2, 0.0))
    return np.hstack([x, extra[:, None]]).astype(np.float32)


def mips_queries(q: np.ndarray) -> np.ndarray:
    return np.hstack([q, np.zeros((q.shape[0], 1), q.dtype)]).astype(np.float32)


def _qps(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    _, ids = index.search(queries, k)
    return len(queries) / max(time.perf_counter() - t, 1e-9), ids


def build_index(
    item_factors: np.ndarray,
    user_queries: np.ndarray,
    *,
    recall_target: float = 0.95,
    exact_max_items: int = EXACT_MAX_ITEMS,
    hnsw_m: int = 32,
) -> tuple[faiss.Index, IndexChoice]:
    xb = np.ascontiguousarray(item_factors, dtype=np.float32)
    xq = np.ascontiguousarray(user_queries, dtype=np.float32)
    n, d = xb.shape
    flat = faiss.IndexFlatIP(d)
    flat.add(xb)
    k = min(RECALL_K, n)
    exact_qps, truth = _qps(flat, xq, k)
    if n <= exact_max_items:
        return flat, IndexChoice("flat", {}, 1.0, exact_qps, exact_qps)

    hnsw = faiss.IndexHNSWFlat(d + 1, hnsw_m, faiss.METRIC_L2)
    hnsw.hnsw.efConstruction = 200
    t = time.perf_counter()
    hnsw.add(mips_items(xb))
    xq_l2 = mips_queries(xq)
    LOG.info("HNSW%d over %d items built in %.1f s", hnsw_m, n, time.perf_counter() - t)
    best = None
    for ef in (64, 128, 256, 512, 1024, 2048):
        hnsw.hnsw.efSearch = ef
        qps, ids = _qps(hnsw, xq_l2, k)
        rec = recall_at(ids, truth)
        LOG.info("efSearch=%d recall@%d=%.4f %.0f q/s (exact %.0f q/s)", ef, k, rec, qps, exact_qps)
        best = IndexChoice("hnsw", {"M": hnsw_m, "efSearch": ef, "mips_to_l2": True}, rec, qps, exact_qps)
        if rec >= recall_target:
            break
    assert best is not None
    if best.recall_at_100 < recall_target:
        LOG.warning(
            "HNSW missed recall target %.3f (best %.4f): using exact search",
            recall_target,
            best.recall_at_100,
        )
        return flat, IndexChoice("flat", {"fallback_from": best.to_json()}, 1.0, exact_qps, exact_qps)
    hnsw.hnsw.efSearch = best.params["efSearch"]
    return hnsw, best


def save_index(index: faiss.Index, path: str) -> None:
    faiss.write_index(index, path)
