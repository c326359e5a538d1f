"""FAISS candidate retrieval: one search for a whole batch of user vectors.

Three index kinds, named by the manifest's params["index"]["kind"] (recgen.core.formats;
export/index.py chooses):
- "flat": exact inner-product search (IndexFlatIP).
- "norm_bounded": exact search over the items with the largest norms (the head), certified per
  query by Cauchy–Schwarz; the queries it cannot certify are searched exactly over the whole
  catalog in one batched call. The answer always equals exact search
  (recgen.core.index_types.NormBounded, the structure export measured).
- "hnsw": HNSW over items lifted to d+1 dims where L2 order is inner-product order (approximate).
Does not filter seen or deleted items (the ranker does) and never removes items.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recgen.core.formats import INDEX_FLAT, INDEX_HNSW, INDEX_NORM_BOUNDED
from recgen.core.index_types import NormBounded, mips_items, mips_queries

LOG = logging.getLogger(__name__)


class LiftedHNSW:
    """HNSW over items lifted to [x, √(M² − |x|²)] (`mips_items`), searched with q' = [q, 0]:
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
        ql = mips_queries(q)
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
            self.index.add(mips_items(vectors[fits], self.m2))
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
        self.kind = str(params.get("kind", INDEX_HNSW if params.get("mips_to_l2") else INDEX_FLAT))
        self._search: NormBounded | LiftedHNSW | ShardIndex | faiss.Index
        if self.kind == INDEX_NORM_BOUNDED:
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
            hnsw.add(mips_items(sub, m2))
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
    def exact(self) -> bool:
        """Exact inner-product search over the whole catalog (not a shard of it)."""
        return self.kind in (INDEX_FLAT, INDEX_NORM_BOUNDED) and not isinstance(self._search, ShardIndex)

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
