"""The retrieval index structures export builds and the worker loads.

Export (export/index.py) measures and saves them; the worker
(worker/retrieval.py) reads items.faiss and searches with the same classes,
so the index that was measured is the index that serves:

- `NormBounded`: exact inner-product top-k over the largest-norm items (the
  head), certified per query by Cauchy–Schwarz, the rest searched exactly;
- the maximum-inner-product lift for HNSW (Bachrach et al. 2014):
  x' = [x, √(M² − |x|²)], q' = [q, 0], so L2 order is inner-product order
  (`mips_items`, `mips_queries`).

This module does not choose an index (export/index.py does), read files, or
shard a catalog (worker/retrieval.py does). numpy and FAISS only.
"""

from __future__ import annotations

import faiss
import numpy as np

# Float32 inner products carry a relative error of about d·2⁻²⁴·|q|·|x| (~4e-6 at d = 64); a head
# answer is certified only when it clears the tail's bound by more than that, so rounding can
# never let a tail item that truly scores higher go unseen.
CERTIFY_SLACK = 1e-5


def flat_vectors(index: faiss.IndexFlat) -> np.ndarray:
    """(ntotal, d) float32 view of an IndexFlat's storage, no copy; invalid once the index grows."""
    n, d = int(index.ntotal), int(index.d)
    return faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d)


def mips_items(x: np.ndarray, max_norm2: float | None = None) -> np.ndarray:
    """(n, d) -> (n, d+1) float32 with equal norms M: L2 nearest = largest inner product.

    max_norm2: M², default the largest squared norm of `x`; rows longer than M get 0.
    """
    norms2 = (x.astype(np.float64) ** 2).sum(axis=1)
    m2 = norms2.max() if max_norm2 is None else max_norm2
    extra = np.sqrt(np.maximum(m2 - norms2, 0.0))
    return np.hstack([x, extra[:, None]]).astype(np.float32)


def mips_queries(q: np.ndarray) -> np.ndarray:
    """(B, d) -> (B, d+1) float32: the query's lift is a zero coordinate."""
    return np.hstack([q, np.zeros((q.shape[0], 1), q.dtype)]).astype(np.float32)


class NormBounded:
    """Exact top-k by inner product: search the head, prove it, fall back where it cannot.

    No item outside the head scores more than |q| · tail_max (Cauchy–Schwarz), so a query whose
    head k-th score is at least that got the exact answer from the head alone. Items added later
    join the head, so tail_max stays a bound. `full` holds every item in row order (it is the
    items.faiss of the version); the head is a copy of its largest-norm rows."""

    def __init__(self, full: faiss.IndexFlat, head_items: int) -> None:
        assert full.metric_type == faiss.METRIC_INNER_PRODUCT, "norm-bounded search needs an IndexFlatIP"
        xb = flat_vectors(full)
        n = len(xb)
        norms = np.linalg.norm(xb.astype(np.float64), axis=1)
        order = np.argsort(-norms, kind="stable")
        m = max(1, min(int(head_items), n))
        self.full = full
        self.head_rows = order[:m].astype(np.int64)  # head position -> catalog row
        self.tail_max = float(norms[order[m]]) if m < n else 0.0
        self.max_norm = float(norms[order[0]]) if n else 0.0
        self.head = faiss.IndexFlatIP(int(full.d))
        self.head.add(np.ascontiguousarray(xb[self.head_rows]))
        self.queries = 0  # counters for the build-time measurement and metrics
        self.fallback_queries = 0

    @property
    def ntotal(self) -> int:
        return int(self.full.ntotal)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, d) -> inner products (B, k), rows (B, k); identical to exact search over `full`."""
        self.queries += len(q)
        if k > self.head.ntotal:  # the head cannot hold a k-th answer: exact search for all
            self.fallback_queries += len(q)
            return self.full.search(q, k)
        scores, pos = self.head.search(q, k)
        rows = self.head_rows[pos]
        qn = np.linalg.norm(q, axis=1)
        bound = qn * self.tail_max + CERTIFY_SLACK * qn * self.max_norm
        unproven = np.flatnonzero(~(scores[:, -1] >= bound))  # NaN scores are unproven too
        if unproven.size:
            self.fallback_queries += int(unproven.size)
            s2, r2 = self.full.search(np.ascontiguousarray(q[unproven]), k)
            scores[unproven], rows[unproven] = s2, r2
        return scores, rows

    def add(self, vectors: np.ndarray) -> None:
        n0 = self.ntotal
        self.full.add(vectors)
        self.head.add(vectors)
        self.head_rows = np.concatenate([self.head_rows, np.arange(n0, n0 + len(vectors), dtype=np.int64)])
        self.max_norm = max(self.max_norm, float(np.linalg.norm(vectors, axis=1).max(initial=0.0)))
