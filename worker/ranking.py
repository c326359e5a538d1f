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

from recgen.core.dismissal import DEMOTION, demote_neighbours, nearness
from recgen.core.foldin import FoldIn
from worker.context import ContextModel, JobContext
from worker.folded_users import FoldedUser
from worker.metrics import Metrics
from worker.retrieval import Retriever
from worker.scoring import Scorer

LOG = logging.getLogger(__name__)

RERANK_MIN = 50  # candidates the scorer sees per user, at least (room for context re-ranking)
COLD_POOL = 1000  # most popular items a cold user's context may re-rank
SORT_MAX = 256  # top_k sorts rows of at most this many columns whole
FEW_ROWS = 4  # top_k takes batches of at most this many rows row by row
DENSE_MAX = 4_000_000  # batch x items at most for exact retrieval by one matrix product (16 MB)
# Above this many items the exact index (norm-bounded at 1M: ~2.4 ms a search) beats a product
# over every item per request (83% of a worker's time at 1M items, docs/growth.md).
DENSE_MAX_ITEMS = 200_000
# Batches of more rows fold in float32 (recgen/core/foldin.py: ~4x faster at 64 rows, the same
# top 50 for every training user of the MovieLens version); smaller ones in float64, exactly as
# training and evaluation did (a lone request gains nothing from float32).
FOLDIN_F32_MIN_ROWS = 16


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(B, C) scores -> (B, min(k, C)) column indices, best first, ties by column (exactly what
    a stable argsort would give), for the whole batch at once: the k-th best value of each row
    by one partition, every column above it plus the first tied ones, then only those sorted."""
    n_rows, c = scores.shape
    k = min(k, c)
    if c <= SORT_MAX:  # a short row: one stable sort of the batch costs less than the steps below
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    if n_rows <= FEW_ROWS:  # row by row: 4 numpy calls each, a quarter of the batch steps' cost
        return np.stack([_top_k_row(r, k) for r in scores]) if n_rows else np.zeros((0, k), np.int64)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # (B, 1)
    better = scores > kth
    tied = scores == kth
    need = k - np.count_nonzero(better, axis=1)[:, None]
    chosen = better | (tied & (np.cumsum(tied, axis=1) <= need))  # exactly k per row
    cols = np.nonzero(chosen)[1].reshape(n_rows, k)  # ascending column within each row
    # Plain (B, 1) x (B, k) indexing, not take_along_axis: the same gather without its
    # per-call index building (a third of this function's time for a small batch).
    r = np.arange(n_rows)[:, None]
    return cols[r, np.lexsort((cols, -scores[r, cols]), axis=1)]


def _top_k_row(row: np.ndarray, k: int) -> np.ndarray:
    """One row's top k columns, ties by column: every column at least as good as the k-th best
    value (k of them, or more with ties), then those sorted by (value, column)."""
    c = row.size
    kth = np.partition(row, c - k)[c - k]
    cand = np.flatnonzero(row >= kth)
    return cand[np.lexsort((cand, -row[cand]))][:k]


@dataclass
class RankJob:
    history_rows: np.ndarray  # (H,) int64 item rows, newest first
    history_weights: np.ndarray  # (H,) float32 event weights (> 0)
    exclude_rows: np.ndarray  # (E,) int64
    k: int
    include_seen: bool = False
    allowed: np.ndarray | None = None  # (n,) bool: category filter; None = every item
    context: JobContext = field(default_factory=JobContext)
    dismissed_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # neighbours sink
    # Every item row the user consumed (history included), excluded unless include_seen;
    # None: the history rows only.
    seen_rows: np.ndarray | None = None
    # The user's shared fold-in entry (worker/folded_users.py): its vector, once solved, is
    # reused by the user's next requests with the same history; None: fold in every time.
    folded: FoldedUser | None = None

    @property
    def consumed(self) -> np.ndarray:
        """Rows this job must not return as consumed: none with include_seen."""
        if self.include_seen:
            return np.zeros(0, np.int64)
        if self.seen_rows is None or not self.seen_rows.size:
            return self.history_rows
        # Duplicates are harmless to every mask built from it: no sort, no unique.
        return np.concatenate([self.seen_rows, self.history_rows])


@dataclass
class RankResult:
    rows: np.ndarray  # (≤k,) int64 item rows, best first
    scores: np.ndarray  # (≤k,) float32
    batch_size: int = 1
    cold_start: bool = False
    # Sharded rankers only (recgen/core/shard_merge.py merges the shards' answers exactly):
    pool_keys: np.ndarray | None = None  # (≤k,) float32 candidate-pool key of each row, higher first
    near: np.ndarray | None = None  # (≤k,) float32 nearness to a dismissed item, 0..1
    pool: int = 0  # 0: rows are this shard's top k; > 0: its whole pool, the merge takes the top `pool`
    demotion: float = 0.0  # the merge demotes by demotion · pool score spread · near


@dataclass
class Ranker:
    factors: np.ndarray  # (n, d)
    popularity: np.ndarray  # (n,)
    foldin: FoldIn
    retriever: Retriever
    scorer: Scorer
    alpha: float  # confidence slope: c = 1 + α·w, as in training
    metrics: Metrics = field(default_factory=Metrics)
    context: ContextModel | None = None  # what the version learned of context; None: ignored
    # (index, count): rank only rows with row % count == index. Every shard keeps all the item
    # factors (fold-in reads any history item's) and the global popularity, so its scores are
    # comparable with the other shards' and recgen/core/shard_merge.py merges them into the one-index answer.
    shard: tuple[int, int] = (0, 1)

    def __post_init__(self) -> None:
        self.deleted = np.zeros(self.n_items, dtype=bool)  # live catalog: removed items
        self.deleted_rows = np.zeros(0, dtype=np.int64)
        self._derive()
        if self.sharded and self.retriever.shard != self.shard:
            self.retriever.keep_shard(self.factors, *self.shard)

    @property
    def sharded(self) -> bool:
        return self.shard[1] > 1

    def _derive(self) -> None:
        """Arrays computed from factors and popularity (again after live appends)."""
        self.pop_order = np.argsort(-self.popularity, kind="stable")
        norms = np.linalg.norm(self.factors, axis=1, keepdims=True)
        self.unit = (self.factors / np.maximum(norms, 1e-12)).astype(np.float32)  # for cosine
        top = max(float(self.popularity.max(initial=0.0)), 1.0)
        self.pop_score = (self.popularity / top).astype(np.float32)
        self.owned = np.arange(self.n_items) % self.shard[1] == self.shard[0]  # (n,) bool
        self.pop_rank = np.empty(self.n_items, np.int64)  # row -> place in the global popularity order
        self.pop_rank[self.pop_order] = np.arange(self.n_items)
        self._open_prefix = np.zeros(0, np.int64)  # `_cold_order`'s answer for a job that bans nothing

    @property
    def n_items(self) -> int:
        return int(self.factors.shape[0])

    # ------------------------------------------------------------ live catalog

    def append_items(self, vectors: np.ndarray) -> None:
        """New items (rows n.. n+m-1) with stand-in factors and no popularity.

        The fold-in Gram matrix YᵀY stays the trained items': training would
        have shrunk the factor of an item nobody interacted with towards zero,
        so a stand-in factor (a prediction of where the item's fans are) must
        not also count as negative evidence against every user."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.factors = np.vstack([self.factors, vectors])
        self.popularity = np.concatenate([self.popularity, np.zeros(len(vectors), np.float32)])
        self.deleted = np.concatenate([self.deleted, np.zeros(len(vectors), dtype=bool)])
        self.foldin.factors = self.factors  # history lookups reach the new rows; gram unchanged
        self.retriever.add(vectors)
        self._derive()

    def set_deleted(self, rows: np.ndarray, deleted: bool) -> None:
        self.deleted[rows] = deleted
        self.deleted_rows = np.flatnonzero(self.deleted).astype(np.int64)
        self._open_prefix = np.zeros(0, np.int64)

    def rank(self, jobs: Sequence[RankJob]) -> list[RankResult]:
        results: list[RankResult | None] = [None] * len(jobs)
        warm = [i for i, j in enumerate(jobs) if j.history_rows.size]
        # (B, d) unit intent vectors, one encoder call for the batch; None: no intent applies.
        q = None if self.context is None else self.context.intent_vectors([j.context.intent for j in jobs])
        for i, j in enumerate(jobs):
            if not j.history_rows.size:
                results[i] = self._cold(j, len(jobs), None if q is None else q[i])
        if warm:
            qw = None if q is None else q[warm]
            for i, r in zip(warm, self._warm([jobs[i] for i in warm], len(jobs), qw), strict=True):
                results[i] = r
        return [r for r in results if r is not None]

    def _exact_allowed(self, user: np.ndarray, allowed: np.ndarray, banned: np.ndarray, c: int) -> np.ndarray:
        """Top-c rows among allowed items by exact inner product.

        A category filter can reject most of what the index returns, so
        filtered requests are scored exactly: O(items · d) for that request.
        """
        scores = self.factors @ user  # (n,)
        scores = np.where(allowed & self.owned, scores, -np.inf)
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
        sims[self.deleted_rows] = -np.inf
        if self.sharded:
            sims[~self.owned] = -np.inf
        k = min(k, int(np.isfinite(sims).sum()))
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return top.astype(np.int64), sims[top].astype(np.float32)

    def _cold_order(self, job: RankJob, need: int, owned: bool = False) -> np.ndarray:
        """The first `need` rows of the popularity order this job may get (fewer if the catalog
        runs out), only the shard's own with `owned`. Walks the order in doubling chunks, so a
        cold answer costs O(need + excluded), not O(items): at 1M items a whole-catalog mask per
        request was ~3 ms of CPU (docs/growth.md)."""
        banned = np.concatenate([job.exclude_rows, job.consumed]).astype(np.int64)
        if not banned.size and job.allowed is None and not owned:
            # Every new user's case: the same popular, not deleted rows each time, kept (as a
            # read-only array) until the catalog changes (`set_deleted`, `_derive`).
            if (
                self._open_prefix.size < need
                and self._open_prefix.size < self.n_items - self.deleted_rows.size
            ):
                self._open_prefix = self._walk_popular(banned, None, False, need)
                self._open_prefix.flags.writeable = False
            return self._open_prefix[:need]
        return self._walk_popular(banned, job.allowed, owned, need)

    def _walk_popular(
        self, banned: np.ndarray, allowed: np.ndarray | None, owned: bool, need: int
    ) -> np.ndarray:
        found: list[np.ndarray] = []
        got, start, chunk = 0, 0, max(2 * need, 256)
        while got < need and start < self.n_items:
            rows = self.pop_order[start : start + chunk]
            ok = ~self.deleted[rows]
            if allowed is not None:
                ok &= allowed[rows]
            if owned:
                ok &= self.owned[rows]
            if banned.size:
                ok &= ~np.isin(rows, banned)
            found.append(rows[ok])
            got += found[-1].size
            start, chunk = start + chunk, chunk * 2
        return np.concatenate(found)[:need] if found else np.zeros(0, np.int64)

    def _cold(self, job: RankJob, batch: int, q: np.ndarray | None = None) -> RankResult:
        pool_size = max(COLD_POOL, job.k)
        if self.context is not None:
            # Context re-ranks the most popular items (log popularity + learned context terms).
            pool = self._cold_order(job, pool_size)[None, :]  # (1, P)
            qb = None if q is None else q[None, :]
            s = self.context.cold_scores(np.log1p(self.popularity[pool]), self.unit, pool, [job.context], qb)
            if s is not None:
                if job.dismissed_rows.size:
                    s = demote_neighbours(s, pool, self.unit, [job.dismissed_rows])
                return self._cold_pick(pool[0], s[0], job.k, batch)
        if job.dismissed_rows.size:  # re-rank a pool of popular items with the neighbours demoted
            pool = self._cold_order(job, pool_size)[None, :]
            s = demote_neighbours(self.pop_score[pool], pool, self.unit, [job.dismissed_rows])
            return self._cold_pick(pool[0], s[0], job.k, batch)
        if self.sharded:  # the owned rows in the global popularity order; key: that order
            rows = self._cold_order(job, job.k, owned=True)
            keys = -self.pop_rank[rows].astype(np.float32)
            return RankResult(rows.astype(np.int64), self.pop_score[rows], batch, True, pool_keys=keys)
        rows = self._cold_order(job, job.k)
        return RankResult(rows.astype(np.int64), self.pop_score[rows], batch, cold_start=True)

    def _cold_pick(self, pool: np.ndarray, s: np.ndarray, k: int, batch: int) -> RankResult:
        """The top k of a re-scored cold pool (P,) with scores (P,). The pool is the global one
        (every shard knows the global popularity) and scored whole, so a shard keeps exactly the
        scores one ranker would give; it then answers only its own rows, keyed by pool place."""
        o = np.argsort(-s, kind="stable")
        if self.sharded:
            o = o[self.owned[pool[o]]][:k]
            keys = -o.astype(np.float32)
            return RankResult(pool[o].astype(np.int64), s[o].astype(np.float32), batch, True, pool_keys=keys)
        o = o[:k]
        return RankResult(pool[o].astype(np.int64), s[o].astype(np.float32), batch, cold_start=True)

    def _warm(self, jobs: list[RankJob], batch: int, q: np.ndarray | None = None) -> list[RankResult]:
        t0 = time.perf_counter()
        users = self._user_vectors(jobs)  # (B, d)
        if self.context is not None:
            users = self.context.blend_users(users, q)  # toward the intent, before retrieval
        t1 = time.perf_counter()
        consumed = [j.consumed for j in jobs]
        if self._dense(len(jobs)):
            picked, keys = self._dense_pools(jobs, users, consumed)  # (B, C) each
        else:
            n_del = self.deleted_rows.size
            banned_counts = [
                n_del + j.exclude_rows.size + c.size for j, c in zip(jobs, consumed, strict=True)
            ]
            fetch = max(max(j.k, RERANK_MIN) + b for j, b in zip(jobs, banned_counts, strict=True))
            cand_ip, cand = self.retriever.search(users, fetch)  # (B, fetch)
            picked, keys = self._pools(jobs, users, consumed, cand, cand_ip)  # (B, C) each
        t2 = time.perf_counter()
        valid = picked >= 0
        item_vecs = self.factors[np.where(valid, picked, 0)]  # (B, C, d)
        scores = self.scorer.score(users, item_vecs)  # (B, C)
        if self.context is not None:
            hours = np.asarray([j.context.hour for j in jobs], np.int64)
            days = np.asarray([j.context.weekday for j in jobs], np.int64)
            term = self.context.time_term("warm", hours, days, picked)  # (B, C) or None
            scores = scores if term is None else scores + term
        if self.sharded:  # the merge demotes: the score spread is the whole pool's, across shards
            t3 = time.perf_counter()
            out = [self._shard_pool(b, j, picked, keys, scores, batch) for b, j in enumerate(jobs)]
        else:
            if any(j.dismissed_rows.size for j in jobs):
                scores = demote_neighbours(
                    scores, np.where(valid, picked, -1), self.unit, [j.dismissed_rows for j in jobs]
                )
            t3 = time.perf_counter()
            scores = np.where(valid, scores, -np.inf)
            order = top_k(scores, max(j.k for j in jobs))  # (B, kmax) best first
            r = np.arange(len(jobs))[:, None]
            top = scores[r, order]
            rows = picked[r, order]
            out = []
            for b, j in enumerate(jobs):
                n = int(np.isfinite(top[b, : j.k]).sum())  # -inf sorts last: the finite ones lead
                out.append(RankResult(rows[b, :n], top[b, :n].astype(np.float32), batch))
        m = self.metrics
        m.observe("foldin_seconds", t1 - t0)
        m.observe("retrieval_seconds", t2 - t1)
        m.observe("scoring_seconds", t3 - t2)
        return out

    def _user_vectors(self, jobs: list[RankJob]) -> np.ndarray:
        """(B, d) float32: each job's folded vector, solved (in one batch) only for the users
        without one yet; a solved vector is kept in the job's FoldedUser for its next request."""
        todo = [b for b, j in enumerate(jobs) if j.folded is None or j.folded.vector is None]
        users = np.empty((len(jobs), self.factors.shape[1]), np.float32)
        for b, j in enumerate(jobs):
            if j.folded is not None and j.folded.vector is not None:
                users[b] = j.folded.vector
        if todo:
            solved = self.foldin.user_vectors(
                [(jobs[b].history_rows, 1.0 + self.alpha * jobs[b].history_weights) for b in todo],
                np.float32 if len(todo) > FOLDIN_F32_MIN_ROWS else np.float64,
            )
            users[todo] = solved
            for b, v in zip(todo, solved, strict=True):
                f = jobs[b].folded
                if f is not None:
                    f.vector = v
        return users

    def _dense(self, n_jobs: int) -> bool:
        """Exact retrieval by one (B, n) matrix product instead of the index: for an exact index
        over a small catalog the product is cheaper than an index search that must over-fetch by
        every consumed item of the batch's heaviest user (the answer is the same: both exact)."""
        return (
            self.retriever.exact
            and not self.sharded
            and self.n_items <= DENSE_MAX_ITEMS
            and n_jobs * self.n_items <= DENSE_MAX
        )

    def _banned_keys(self, jobs: list[RankJob], consumed: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The batch's per-job excluded and consumed rows as CSR: (job of each entry, row)."""
        lists = [x for b, j in enumerate(jobs) for x in (j.exclude_rows, consumed[b])]
        lens = np.asarray([x.size for x in lists], np.int64).reshape(len(jobs), 2).sum(axis=1)
        owner = np.repeat(np.arange(len(jobs), dtype=np.int64), lens)
        rows = np.concatenate(lists).astype(np.int64) if lens.sum() else np.zeros(0, np.int64)
        return owner, rows

    def _dense_pools(
        self, jobs: list[RankJob], users: np.ndarray, consumed: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`_pools` for an exact index: every item's inner product, the deleted, excluded,
        consumed and filtered-out items masked to -inf, then each job's top max(RERANK_MIN, k)."""
        ip = users.astype(np.float32, copy=False) @ self.factors.T  # (B, n)
        ip[:, self.deleted_rows] = -np.inf
        owner, rows = self._banned_keys(jobs, consumed)
        ip[owner, rows] = -np.inf
        for b, j in enumerate(jobs):
            if j.allowed is not None:
                ip[b, ~(j.allowed & self.owned)] = -np.inf
        c = min(max(RERANK_MIN, max(j.k for j in jobs)), self.n_items)
        picked = top_k(ip, c).astype(np.int64)  # (B, c) rows, best first
        keys = ip[np.arange(len(jobs))[:, None], picked]
        limit = np.asarray([max(RERANK_MIN, j.k) for j in jobs], np.int64)
        gone = ~np.isfinite(keys) | (np.arange(c)[None, :] >= limit[:, None])
        picked[gone] = -1
        keys[gone] = -np.inf
        return picked, keys

    def _pools(
        self,
        jobs: list[RankJob],
        users: np.ndarray,
        consumed: list[np.ndarray],
        cand: np.ndarray,
        cand_ip: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each job's candidate pool, (B, C) rows (-1: none) and inner products, for the whole
        batch at once: the retrieved rows minus deleted ones (a dense mask over items) and minus
        each job's excluded and consumed rows (a CSR mask: keys b·n + row, one `isin` for the
        batch), then the first max(RERANK_MIN, k) survivors of each job in retrieval order.
        Each job's own pool size, so its answer does not depend on the batch it landed in."""
        n_jobs, n = len(jobs), self.n_items
        c = max(RERANK_MIN, max(j.k for j in jobs))
        filtered = [b for b, j in enumerate(jobs) if j.allowed is not None]
        if filtered:  # category filters: exact search per filtered job, into the same table
            width = max(cand.shape[1], c)
            rows = np.full((n_jobs, width), -1, np.int64)
            ips = np.full((n_jobs, width), -np.inf, np.float32)
            rows[:, : cand.shape[1]], ips[:, : cand.shape[1]] = cand, cand_ip
            for b in filtered:
                j = jobs[b]
                banned = np.concatenate([self.deleted_rows, j.exclude_rows, consumed[b]])
                assert j.allowed is not None
                r = self._exact_allowed(users[b], j.allowed, banned, c)
                rows[b] = -1
                rows[b, : r.size] = r
                ips[b, : r.size] = (self.factors[r] @ users[b]).astype(np.float32)
            cand, cand_ip = rows, ips
        owner, banned_rows = self._banned_keys(jobs, consumed)
        banned_keys = owner * n + banned_rows
        present = cand >= 0
        safe = np.where(present, cand, 0)
        cand_keys = np.arange(n_jobs, dtype=np.int64)[:, None] * n + safe
        ok = present & ~self.deleted[safe] & ~np.isin(cand_keys, banned_keys)
        limit = np.asarray([max(RERANK_MIN, j.k) for j in jobs], np.int64)
        place = np.cumsum(ok, axis=1) - 1  # where each survivor goes in its job's pool
        keep = ok & (place < limit[:, None])
        bi, ci = np.nonzero(keep)
        picked = np.full((n_jobs, c), -1, dtype=np.int64)
        keys = np.full((n_jobs, c), -np.inf, dtype=np.float32)  # inner products: the pool's order
        picked[bi, place[bi, ci]] = cand[bi, ci]
        keys[bi, place[bi, ci]] = cand_ip[bi, ci]
        return picked, keys

    def _shard_pool(
        self, b: int, j: RankJob, picked: np.ndarray, keys: np.ndarray, scores: np.ndarray, batch: int
    ) -> RankResult:
        """A shard's whole warm pool for job b: its rows, their scores before any dismissal
        demotion, retrieval keys and nearness to the dismissed items (the shard merge ranks the
        union of the shards' pools as the one index's pool, then demotes and takes the top k)."""
        valid = np.flatnonzero(picked[b] >= 0)
        rows = picked[b, valid]
        near = np.zeros(rows.size, np.float32)
        if j.dismissed_rows.size and rows.size:
            near = nearness(self.unit, rows, j.dismissed_rows).astype(np.float32)
        s = scores[b, valid].astype(np.float32)
        o = np.argsort(-s, kind="stable")
        return RankResult(
            rows[o],
            s[o],
            batch,
            pool_keys=keys[b, valid][o],
            near=near[o],
            pool=max(RERANK_MIN, j.k),
            demotion=DEMOTION if j.dismissed_rows.size else 0.0,
        )
