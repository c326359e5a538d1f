"""FAISS candidate retrieval: one search for a whole batch of user vectors.

Three index kinds, named by the manifest's params["index"]["kind"] (export/index.py chooses):
- "flat": exact inner-product search (IndexFlatIP).
- "norm_bounded": exact search over the items with the largest norms (the head), certified per
  query by Cauchy–Schwarz; the queries it cannot certify are searched exactly over the whole
  catalog in one batched call. The answer always equals exact search.
- "hnsw": HNSW over items lifted to d+1 dims where L2 order is inner-product order (approximate).
Does not filter seen or deleted items (the ranker does) and never removes items.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np

LOG = logging.getLogger(__name__)

# Float32 inner products carry a relative error of about d·2⁻²⁴·|q|·|x| (~4e-6 at d = 64); a head
# answer is certified only when it clears the tail's bound by more than that, so rounding can
# never let a tail item that truly scores higher go unseen.
CERTIFY_SLACK = 1e-5


def flat_vectors(index: faiss.IndexFlat) -> np.ndarray:
    """(ntotal, d) float32 view of an IndexFlat's storage, no copy; invalid once the index grows."""
    n, d = int(index.ntotal), int(index.d)
    return faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d)


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


class LiftedHNSW:
    """HNSW over items lifted to [x, √(M² − |x|²)] (export/index.py), searched with q' = [q, 0]:
    |q' − x'|² = |q|² + M² − 2 q·x, so its L2 distances convert back to inner products. Items added
    later with |x| ≤ M are lifted and inserted; longer ones cannot be lifted with the same M and go
    to a small exact side index merged at search."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        n = int(index.ntotal)
        self.m2 = float((np.asarray(index.reconstruct(0), np.float64) ** 2).sum()) if n else 0.0
        self.rows = np.arange(n, dtype=np.int64)  # graph id -> catalog row
        self.side = faiss.IndexFlatIP(int(index.d) - 1)
        self.side_rows = np.zeros(0, dtype=np.int64)
        self.ntotal = n

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ql = np.hstack([q, np.zeros((len(q), 1), np.float32)])
        kk = min(k, int(self.index.ntotal)) if self.index.ntotal else 0
        q2 = (q.astype(np.float64) ** 2).sum(axis=1, keepdims=True)
        if kk:
            dist, ids = self.index.search(ql, kk)
            scores = ((q2 + self.m2 - dist) / 2).astype(np.float32)
            rows = np.where(ids >= 0, self.rows[np.maximum(ids, 0)], -1)
            scores[ids < 0] = -np.inf
        else:
            scores, rows = np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self.side.ntotal:
            s2, i2 = self.side.search(q, min(k, int(self.side.ntotal)))
            scores = np.hstack([scores, s2])
            rows = np.hstack([rows, np.where(i2 >= 0, self.side_rows[np.maximum(i2, 0)], -1)])
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            scores, rows = np.take_along_axis(scores, top, 1), np.take_along_axis(rows, top, 1)
        if scores.shape[1] < k:  # pad like FAISS does where fewer items exist
            pad = k - scores.shape[1]
            scores = np.hstack([scores, np.full((len(q), pad), -np.inf, np.float32)])
            rows = np.hstack([rows, np.full((len(q), pad), -1, np.int64)])
        return scores, rows

    def add(self, vectors: np.ndarray) -> None:
        new_rows = np.arange(self.ntotal, self.ntotal + len(vectors), dtype=np.int64)
        n2 = (vectors.astype(np.float64) ** 2).sum(axis=1)
        fits = n2 <= self.m2
        if fits.any():
            extra = np.sqrt(np.maximum(self.m2 - n2[fits], 0.0))[:, None]
            self.index.add(np.hstack([vectors[fits], extra]).astype(np.float32))
            self.rows = np.concatenate([self.rows, new_rows[fits]])
        if (~fits).any():
            self.side.add(np.ascontiguousarray(vectors[~fits]))
            self.side_rows = np.concatenate([self.side_rows, new_rows[~fits]])
        self.ntotal += len(vectors)


class ShardIndex:
    """One shard's index: the same kind of index over the rows this worker owns, searched in
    its own positions and answered in catalog rows (`rows`: position -> row)."""

    def __init__(self, inner: NormBounded | LiftedHNSW | faiss.Index, rows: np.ndarray) -> None:
        self.inner = inner
        self.rows = rows.astype(np.int64)

    @property
    def ntotal(self) -> int:
        return int(self.inner.ntotal)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, pos = self.inner.search(q, k)
        return scores, np.where(pos >= 0, self.rows[np.maximum(pos, 0)], -1)

    def add(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        self.inner.add(vectors)
        self.rows = np.concatenate([self.rows, rows.astype(np.int64)])


class Retriever:
    def __init__(self, path: Path, params: dict[str, Any], threads: int) -> None:
        # OpenMP threads are per process: set before the first search. A
        # single query is slower with 2 threads than 1 (STACK.md), batches gain.
        faiss.omp_set_num_threads(max(1, threads))
        index = faiss.read_index(str(path))
        if "efSearch" in params and hasattr(index, "hnsw"):
            index.hnsw.efSearch = int(params["efSearch"])
        if "nprobe" in params and hasattr(index, "nprobe"):
            index.nprobe = int(params["nprobe"])
        self.kind = str(params.get("kind", "hnsw" if params.get("mips_to_l2") else "flat"))
        self._search: NormBounded | LiftedHNSW | ShardIndex | faiss.Index
        if self.kind == "norm_bounded":
            assert isinstance(index, faiss.IndexFlat), f"norm_bounded over {type(index).__name__}"
            self._search = NormBounded(index, int(params["head_items"]))
            recorded = params.get("tail_max_norm")
            if recorded is not None and abs(float(recorded) - self._search.tail_max) > 1e-4 * max(
                1.0, self._search.tail_max
            ):
                # The bound is recomputed from the stored vectors, so search stays exact either way.
                LOG.warning("tail norm %.6g differs from the exported %.6g", self._search.tail_max, recorded)
        elif bool(params.get("mips_to_l2", False)):  # items lifted to d+1 dims (export/index.py)
            self._search = LiftedHNSW(index)
        else:
            self._search = index
        self.index = index
        self.dim = int(index.d) - (1 if isinstance(self._search, LiftedHNSW) else 0)
        self.params = params
        self.shard = (0, 1)  # (index, count): search rows with row % count == index
        self.n_rows = self.ntotal  # catalog rows, owned or not (live appends number them)

    def keep_shard(self, factors: np.ndarray, index: int, count: int) -> None:
        """Search only the rows this shard owns (row % count == index), in an index of the
        same kind rebuilt over them: exact kinds stay exact over the shard, so the shards'
        merged answers equal the single index's. Builds in seconds for flat and norm-bounded;
        HNSW builds a graph over the shard (minutes per million items)."""
        assert 0 <= index < count, f"shard {index}/{count}"
        assert len(factors) == self.n_rows, (len(factors), self.n_rows)
        rows = np.flatnonzero(np.arange(len(factors)) % count == index)
        sub = np.ascontiguousarray(factors[rows], dtype=np.float32)
        inner: NormBounded | LiftedHNSW | faiss.Index
        if isinstance(self._search, NormBounded):
            flat = faiss.IndexFlatIP(self.dim)
            flat.add(sub)
            # The same head size, not the same share: a shard's k-th best head score must still
            # clear its tail bound, and a head split N ways would certify far fewer queries.
            inner = NormBounded(flat, int(self.params["head_items"]))
            built: faiss.Index = flat
        elif isinstance(self._search, LiftedHNSW):
            m2 = self._search.m2  # the whole catalog's lift, so every owned row still fits
            graph = self.index.hnsw  # type: ignore[attr-defined]
            hnsw = faiss.IndexHNSWFlat(self.dim + 1, int(graph.nb_neighbors(1)), faiss.METRIC_L2)
            hnsw.hnsw.efConstruction = int(graph.efConstruction)
            hnsw.hnsw.efSearch = int(graph.efSearch)
            extra = np.sqrt(np.maximum(m2 - (sub.astype(np.float64) ** 2).sum(axis=1), 0.0))[:, None]
            hnsw.add(np.hstack([sub, extra]).astype(np.float32))
            inner = LiftedHNSW(hnsw)
            inner.m2 = m2
            built = hnsw
        else:
            if not isinstance(self._search, faiss.IndexFlat):
                LOG.warning("shard of a %s index: searched exactly", type(self._search).__name__)
            inner = built = faiss.IndexFlatIP(self.dim)
            inner.add(sub)
        self._search = ShardIndex(inner, rows)
        self.index = built  # the whole catalog's index is no longer held
        self.shard = (index, count)
        LOG.info("shard %d/%d: %d of %d items indexed (%s)", index, count, len(rows), len(factors), self.kind)

    @property
    def ntotal(self) -> int:
        return int(self._search.ntotal)

    def search(self, user_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, d) -> inner-product scores (B, k), rows (B, k); rows are -1 where fewer exist.

        Only the rows are used: the scorer computes the ranking scores."""
        k = max(1, min(k, self.ntotal))
        q = np.ascontiguousarray(user_vectors, dtype=np.float32)
        return self._search.search(q, k)

    def add(self, vectors: np.ndarray) -> None:
        """Append items as rows ntotal..ntotal+n-1 (live catalog upserts); search stays as exact as
        the kind is (exact for flat and norm_bounded)."""
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"vectors of shape {v.shape}: expected (n, {self.dim})")
        if len(v) == 0:
            return
        if not np.isfinite(v).all():
            raise ValueError("vectors must be finite")
        rows = np.arange(self.n_rows, self.n_rows + len(v), dtype=np.int64)
        self.n_rows += len(v)
        if isinstance(self._search, ShardIndex):  # only the rows this shard owns join its index
            mine = rows % self.shard[1] == self.shard[0]
            if mine.any():
                self._search.add(np.ascontiguousarray(v[mine]), rows[mine])
            return
        self._search.add(v)
