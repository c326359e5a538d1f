"""Held-out evaluation: temporal leave-last-one-out, all unseen items ranked.

Protocol (fixed, so numbers compare with peers): every rating is a positive;
each user's last interaction by time is held out, time ties kept in file
order (never broken by item id); a model ranks every item the user has not
interacted with in training; HitRate@10 (= Recall@10 with one held-out item),
NDCG@10, and catalog coverage of all top-10 lists. User vectors come from
fold-in against the trained item factors, exactly as the worker computes
them at request time. Baselines: most-popular and EASE (Steck 2019,
export/ease.py).

Scale: nothing here is dense in users × items. Users are scored in chunks
sized from the export's memory budget (export/budget.py), the items each
user saw in training are excluded through a CSR index of the training rows,
and only the top 10 per user are kept. Tuning evaluates a fixed-seed sample
of at most `MAX_TUNING_USERS` users (`sample_split`) and every result carries
the standard error of its mean metrics, so a sample's noise is on record.
This module does not train.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from export import budget
from export.data import Dataset, iter_user_histories
from recgen.core.foldin import FoldIn

LOG = logging.getLogger(__name__)

K = 10
SCORE_BLOCK = 512  # users per scoring matmul; whole blocks keep results independent of chunking
MAX_CHUNK_USERS = 4096
CHUNK_BYTES = 1 << 30  # a chunk's score and ranking arrays, at most
MAX_TUNING_USERS = 20_000  # validation users evaluated per tuning trial (`sample_split`)
TUNING_SEED = 0
FOLDIN_BYTES = 64 << 20  # float64 work of one fold-in batch, at most

Histories = Callable[[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]


@dataclass
class Split:
    train_rows: np.ndarray  # row indices into the dataset
    test_user: np.ndarray  # (m,) user index with a held-out item
    test_item: np.ndarray  # (m,) the held-out item
    sampled_from: int | None = None  # test users before `sample_split`, if it sampled


def leave_last_out(ds: Dataset, rows: np.ndarray | None = None) -> Split:
    """Hold out each user's last interaction (users with ≥ 2 interactions)."""
    keep = np.ones(len(ds), dtype=bool) if rows is None else np.zeros(len(ds), dtype=bool)
    if rows is not None:
        keep[rows] = True
    train, tu, ti = [], [], []
    for u, hist in iter_user_histories(ds):
        hist = hist[keep[hist]]
        if hist.size >= 2:
            train.append(hist[:-1])
            tu.append(u)
            ti.append(ds.item[hist[-1]])
        elif hist.size:
            train.append(hist)
    return Split(np.sort(np.concatenate(train)), np.asarray(tu, np.int64), np.asarray(ti, np.int64))


def sample_split(split: Split, max_users: int = MAX_TUNING_USERS, seed: int = TUNING_SEED) -> Split:
    """At most max_users test users, uniformly without replacement, in their original order.

    Training rows are unchanged (the model and the seen items are the full split's); only
    which users are ranked is sampled, so tuning cost stops growing with the user count.
    """
    m = len(split.test_user)
    if m <= max_users:
        return split
    idx = np.sort(np.random.default_rng(seed).choice(m, max_users, replace=False))
    return Split(split.train_rows, split.test_user[idx], split.test_item[idx], sampled_from=m)


@dataclass
class TrainMatrix:
    """The training rows as CSR, one row per user: distinct items ascending, with counts."""

    indptr: np.ndarray  # (n_users + 1,) int64
    items: np.ndarray  # (nnz,) int64
    counts: np.ndarray  # (nnz,) float32 interactions per (user, item)

    def row(self, u: int) -> slice:
        return slice(int(self.indptr[u]), int(self.indptr[u + 1]))

    def positions(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(i, p) for every entry p of users[i]'s row: i into users, p into items/counts."""
        starts = self.indptr[users]
        lengths = self.indptr[users + 1] - starts
        i = np.repeat(np.arange(len(users)), lengths)
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)  # where each row begins in i
        return i, np.repeat(starts, lengths) + (np.arange(len(i)) - first)


def train_matrix(ds: Dataset, rows: np.ndarray) -> TrainMatrix:
    key = ds.user[rows].astype(np.int64) * ds.n_items + ds.item[rows]
    uniq, counts = np.unique(key, return_counts=True)
    indptr = np.zeros(ds.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(uniq // ds.n_items, minlength=ds.n_users), out=indptr[1:])
    return TrainMatrix(indptr, uniq % ds.n_items, counts.astype(np.float32))


def top_unseen(scores: np.ndarray, seen: TrainMatrix, users: np.ndarray) -> np.ndarray:
    """(m, K) item indices, best first, of each user's highest-scored items not seen in training.

    Ties are broken as `np.argpartition` then a stable sort leave them, per row, so the
    result for a user does not depend on which other users share the chunk.
    """
    neg = np.negative(scores)  # a fresh (m, n) array we own: unseen scores negated, seen +inf
    r, pos = seen.positions(users)
    neg[r, seen.items[pos]] = np.inf
    k = min(K, neg.shape[1] - 1)
    top = np.argpartition(neg, k, axis=1)[:, :K]
    top_neg = np.take_along_axis(neg, top, axis=1)
    return np.take_along_axis(top, np.argsort(top_neg, axis=1, kind="stable"), axis=1)


def metrics_from_top(
    tops: list[np.ndarray], test_item: np.ndarray, n_items: int, sampled_from: int | None = None
) -> dict[str, Any]:
    """HR@10, NDCG@10, recall@10 and coverage@10 from each user's top-10 (in test-user order)."""
    top = np.concatenate(tops) if tops else np.zeros((0, K), np.int64)
    match = top == test_item[:, None]
    hit = match.any(axis=1)
    ndcg = np.where(hit, 1.0 / np.log2(np.argmax(match, axis=1) + 2.0), 0.0)
    n = len(test_item)
    out: dict[str, Any] = {
        "hit_rate@10": float(hit.mean()),
        "recall@10": float(hit.mean()),  # one held-out item per user
        "ndcg@10": float(ndcg.mean()),
        "coverage@10": float(np.unique(top).size / n_items),
        "users": int(n),
        # standard error of the two means over users (sampling noise of a tuning sample)
        "hit_rate@10_se": float(hit.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
        "ndcg@10_se": float(ndcg.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
    }
    if sampled_from is not None:
        out["sampled_from"] = int(sampled_from)  # coverage@10 is over the sampled users' lists
    return out


def chunk_users(n_items: int, score_bytes: int, max_memory: int | None, what: str) -> int:
    """Users per chunk so that a chunk's (m, n_items) work arrays fit the budget's headroom."""
    per_user = n_items * (2 * score_bytes + 8)  # scores, their negated copy, argpartition's int64
    room = budget.require(per_user, max_memory, f"{what} (one user x {n_items:,} items)", "use fewer items")
    # at most half the headroom (the rest is scratch) and CHUNK_BYTES: bigger chunks gain nothing
    m = min(MAX_CHUNK_USERS, max(1, min(room // 2, CHUNK_BYTES) // per_user))
    return m - m % SCORE_BLOCK if m >= SCORE_BLOCK else m


def evaluate_scorer(
    ds: Dataset,
    split: Split,
    score_users: Callable[[np.ndarray], np.ndarray],
    *,
    seen: TrainMatrix | None = None,
    score_bytes: int = 4,
    max_memory: int | None = None,
    progress: bool = False,
    name: str = "scorer",
) -> dict[str, Any]:
    """score_users(user indices) -> (m, n_items) scores (score_bytes per value), in chunks."""
    seen = train_matrix(ds, split.train_rows) if seen is None else seen
    m = chunk_users(ds.n_items, score_bytes, max_memory, f"evaluating {name}")
    starts = range(0, len(split.test_user), m)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"evaluating {name}", unit="chunk", leave=False, disable=None)
    tops = []
    for s in starts:
        users = split.test_user[s : s + m]
        tops.append(top_unseen(score_users(users), seen, users))
    return metrics_from_top(tops, split.test_item, ds.n_items, split.sampled_from)


def user_histories(
    ds: Dataset, rows: np.ndarray, alpha: float, weight: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per user (item rows, confidences) from the given interaction rows."""
    w = np.ones(len(ds), np.float32) if weight is None else weight
    hist: list[tuple[np.ndarray, np.ndarray]] = [
        (np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(ds.n_users)
    ]
    users = ds.user[rows]
    order = np.argsort(users, kind="stable")
    r = rows[order]
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for chunk in np.split(r, bounds):
        if chunk.size == 0:
            continue
        items, inv = np.unique(ds.item[chunk], return_inverse=True)
        wsum = np.bincount(inv, weights=w[chunk]).astype(np.float32)
        hist[int(ds.user[chunk[0]])] = (items.astype(np.int64), 1.0 + alpha * wsum)
    return hist


def train_histories(seen: TrainMatrix, alpha: float) -> Histories:
    """The default fold-in histories: all training items, c = 1 + α·count (as `user_histories`)."""

    def histories(users: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        rows = [seen.row(int(u)) for u in users]
        return [(seen.items[r], 1.0 + alpha * seen.counts[r]) for r in rows]

    return histories


def fold_in(fold: FoldIn, hist: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """fold.user_vectors over batches of similar history length (bounded padding), in input order.

    A user's vector does not depend on its batch (padding has confidence 0 and drops out
    of the sums), so this equals one `user_vectors` call on the whole list, without
    padding every user to the longest history.
    """
    d = fold.factors.shape[1]
    lengths = np.maximum(np.array([len(r) for r, _ in hist], dtype=np.int64), 1)
    order = np.argsort(lengths, kind="stable")
    cells = max(1, FOLDIN_BYTES // (3 * 8 * d))  # (user, history entry) cells per batch
    # ... and at most SCORE_BLOCK users, which bounds the (B, d, d) systems too
    out = np.zeros((len(hist), d), dtype=np.float32)
    s = 0
    while s < len(order):
        # ascending lengths: a batch [s, e) pads to lengths[order[e - 1]]
        padded = lengths[order[s : s + SCORE_BLOCK]] * np.arange(1, min(SCORE_BLOCK, len(order) - s) + 1)
        e = s + max(1, int(np.searchsorted(padded, cells, "right")))
        sel = order[s:e]
        out[sel] = fold.user_vectors([hist[i] for i in sel])
        s = e
    return out


def evaluate_mf(
    ds: Dataset,
    split: Split,
    item_factors: np.ndarray,
    reg: float,
    alpha: float,
    *,
    histories: Histories | None = None,
    max_memory: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Rank by fold-in user vectors · item factors, as the worker serves them.

    histories: (users) -> [(item rows, fold-in confidences)] per user, e.g. the capped,
    time-decayed histories the server holds; default all training items, c = 1 + α·count.
    Seen items excluded are always all training items.
    """
    fold = FoldIn(item_factors, reg)
    seen = train_matrix(ds, split.train_rows)
    hist = train_histories(seen, alpha) if histories is None else histories

    def score(users: np.ndarray) -> np.ndarray:
        out = np.empty((len(users), ds.n_items), dtype=np.float32)
        for s in range(0, len(users), SCORE_BLOCK):
            vecs = fold_in(fold, hist(users[s : s + SCORE_BLOCK]))
            out[s : s + SCORE_BLOCK] = vecs @ fold.factors.T
        return out

    return evaluate_scorer(
        ds, split, score, seen=seen, max_memory=max_memory, progress=progress, name="MF (fold-in)"
    )


def evaluate_popularity(
    ds: Dataset, split: Split, *, max_memory: int | None = None, progress: bool = False
) -> dict[str, Any]:
    pop = np.bincount(ds.item[split.train_rows], minlength=ds.n_items).astype(np.float32)
    return evaluate_scorer(
        ds,
        split,
        lambda users: np.broadcast_to(pop, (len(users), ds.n_items)),
        max_memory=max_memory,
        progress=progress,
        name="popularity",
    )
