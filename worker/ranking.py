"""Ranking a batch of users: fold-in → FAISS → ONNX scorer → top-k.

One fold-in solve, one FAISS search and one ONNX scoring call per batch.
Items the user has interacted with and excluded items never come back: the
search over-fetches by their number and drops them (exact, no post-hoc
shortfall). A user without usable history gets the cold-start answer,
items by training popularity. Runs in the batcher's model thread; knows
nothing of gRPC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.foldin import FoldIn
from worker.metrics import Metrics
from worker.retrieval import Retriever
from worker.scoring import Scorer

LOG = logging.getLogger(__name__)

RERANK_MIN = 50  # candidates the scorer sees per user, at least (room for context re-ranking)


@dataclass
class RankJob:
    history_rows: np.ndarray  # (H,) int64 item rows, newest first
    history_weights: np.ndarray  # (H,) float32 event weights (> 0)
    exclude_rows: np.ndarray  # (E,) int64
    k: int
    include_seen: bool = False
    allowed: np.ndarray | None = None  # (n,) bool: category filter; None = every item


@dataclass
class RankResult:
    rows: np.ndarray  # (≤k,) int64 item rows, best first
    scores: np.ndarray  # (≤k,) float32
    batch_size: int = 1
    cold_start: bool = False


@dataclass
class Ranker:
    factors: np.ndarray  # (n, d)
    popularity: np.ndarray  # (n,)
    foldin: FoldIn
    retriever: Retriever
    scorer: Scorer
    alpha: float  # confidence slope: c = 1 + α·w, as in training
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.pop_order = np.argsort(-self.popularity, kind="stable")
        norms = np.linalg.norm(self.factors, axis=1, keepdims=True)
        self.unit = (self.factors / np.maximum(norms, 1e-12)).astype(np.float32)  # for cosine
        top = max(float(self.popularity.max(initial=0.0)), 1.0)
        self.pop_score = (self.popularity / top).astype(np.float32)

    @property
    def n_items(self) -> int:
        return int(self.factors.shape[0])

    def rank(self, jobs: Sequence[RankJob]) -> list[RankResult]:
        results: list[RankResult | None] = [None] * len(jobs)
        warm = [i for i, j in enumerate(jobs) if j.history_rows.size]
        for i, j in enumerate(jobs):
            if not j.history_rows.size:
                results[i] = self._cold(j, len(jobs))
        if warm:
            for i, r in zip(warm, self._warm([jobs[i] for i in warm], len(jobs)), strict=True):
                results[i] = r
        return [r for r in results if r is not None]

    def _exact_allowed(self, user: np.ndarray, allowed: np.ndarray, banned: np.ndarray, c: int) -> np.ndarray:
        """Top-c rows among allowed items by exact inner product.

        A category filter can reject most of what the index returns, so
        filtered requests are scored exactly: O(items · d) for that request.
        """
        scores = self.factors @ user  # (n,)
        scores = np.where(allowed, scores, -np.inf)
        scores[banned] = -np.inf
        n_ok = int(np.isfinite(scores).sum())
        if n_ok == 0:
            return np.zeros(0, dtype=np.int64)
        top = np.argpartition(-scores, min(c, n_ok) - 1)[: min(c, n_ok)]
        return top[np.argsort(-scores[top], kind="stable")].astype(np.int64)

    def similar(self, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k items with the highest cosine to `row` (itself excluded)."""
        sims = self.unit @ self.unit[row]  # (n,)
        sims[row] = -np.inf
        k = min(k, self.n_items - 1)
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return top.astype(np.int64), sims[top].astype(np.float32)

    def _cold(self, job: RankJob, batch: int) -> RankResult:
        banned = np.zeros(self.n_items, dtype=bool) if job.allowed is None else ~job.allowed
        banned[job.exclude_rows] = True
        rows = self.pop_order[~banned[self.pop_order]][: job.k]
        return RankResult(rows.astype(np.int64), self.pop_score[rows], batch, cold_start=True)

    def _warm(self, jobs: list[RankJob], batch: int) -> list[RankResult]:
        t0 = time.perf_counter()
        users = self.foldin.user_vectors(
            [(j.history_rows, 1.0 + self.alpha * j.history_weights) for j in jobs]
        )  # (B, d)
        t1 = time.perf_counter()
        banned_counts = [j.exclude_rows.size + (0 if j.include_seen else j.history_rows.size) for j in jobs]
        fetch = max(max(j.k, RERANK_MIN) + b for j, b in zip(jobs, banned_counts, strict=True))
        _, cand = self.retriever.search(users, fetch)  # (B, fetch)
        t2 = time.perf_counter()

        c = max(RERANK_MIN, max(j.k for j in jobs))
        picked = np.full((len(jobs), c), -1, dtype=np.int64)
        for b, j in enumerate(jobs):
            banned = j.exclude_rows if j.include_seen else np.concatenate([j.exclude_rows, j.history_rows])
            if j.allowed is not None:
                row = self._exact_allowed(users[b], j.allowed, banned, c)
            else:
                row = cand[b]
            keep = row[(row >= 0) & ~np.isin(row, banned)][:c]
            picked[b, : keep.size] = keep
        valid = picked >= 0
        item_vecs = self.factors[np.where(valid, picked, 0)]  # (B, C, d)
        scores = self.scorer.score(users, item_vecs)  # (B, C)
        t3 = time.perf_counter()
        scores = np.where(valid, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")
        out = []
        for b, j in enumerate(jobs):
            o = order[b, : j.k]
            o = o[np.isfinite(scores[b, o])]
            out.append(RankResult(picked[b, o], scores[b, o].astype(np.float32), batch))
        m = self.metrics
        m.observe("foldin_seconds", t1 - t0)
        m.observe("retrieval_seconds", t2 - t1)
        m.observe("scoring_seconds", t3 - t2)
        return out
