"""Held-out evaluation: temporal leave-last-one-out, all unseen items ranked.

Protocol (fixed, so numbers compare with peers): every rating is a positive;
each user's last interaction by time is held out, time ties kept in file
order (never broken by item id); a model ranks every item the user has not
interacted with in training; HitRate@10 (= Recall@10 with one held-out item),
NDCG@10, and catalog coverage of all top-10 lists. User vectors come from
fold-in against the trained item factors, exactly as the worker computes
them at request time. Baselines: most-popular and EASE (Steck 2019).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from export.data import Dataset, iter_user_histories
from worker.foldin import FoldIn

LOG = logging.getLogger(__name__)

K = 10


@dataclass
class Split:
    train_rows: np.ndarray  # row indices into the dataset
    test_user: np.ndarray  # (m,) user index with a held-out item
    test_item: np.ndarray  # (m,) the held-out item


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


def _seen_matrix(ds: Dataset, rows: np.ndarray) -> np.ndarray:
    seen = np.zeros((ds.n_users, ds.n_items), dtype=bool)
    seen[ds.user[rows], ds.item[rows]] = True
    return seen


def rank_metrics(
    scores: np.ndarray, seen: np.ndarray, test_item: np.ndarray, n_items: int
) -> dict[str, float]:
    """scores: (m, n_items) for the m test users; seen: (m, n_items) train mask."""
    s = np.where(seen, -np.inf, scores)
    top = np.argpartition(-s, K, axis=1)[:, :K]
    top_scores = np.take_along_axis(s, top, axis=1)
    top = np.take_along_axis(top, np.argsort(-top_scores, axis=1, kind="stable"), axis=1)
    hit_pos = np.argmax(top == test_item[:, None], axis=1)
    hit = (top == test_item[:, None]).any(axis=1)
    ndcg = np.where(hit, 1.0 / np.log2(hit_pos + 2.0), 0.0)
    return {
        "hit_rate@10": float(hit.mean()),
        "recall@10": float(hit.mean()),  # one held-out item per user
        "ndcg@10": float(ndcg.mean()),
        "coverage@10": float(np.unique(top).size / n_items),
        "users": int(len(test_item)),
    }


def evaluate_scorer(
    ds: Dataset, split: Split, score_users: Callable[[np.ndarray], np.ndarray]
) -> dict[str, float]:
    """score_users(user indices) -> (m, n_items) scores."""
    seen_all = _seen_matrix(ds, split.train_rows)
    out = []
    for start in range(0, len(split.test_user), 512):
        users = split.test_user[start : start + 512]
        out.append((score_users(users), seen_all[users]))
    scores = np.concatenate([o[0] for o in out])
    seen = np.concatenate([o[1] for o in out])
    return rank_metrics(scores, seen, split.test_item, ds.n_items)


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


def evaluate_mf(
    ds: Dataset, split: Split, item_factors: np.ndarray, reg: float, alpha: float
) -> dict[str, float]:
    fold = FoldIn(item_factors, reg)
    hist = user_histories(ds, split.train_rows, alpha)

    def score(users: np.ndarray) -> np.ndarray:
        vecs = fold.user_vectors([hist[u] for u in users])
        return vecs @ fold.factors.T

    return evaluate_scorer(ds, split, score)


def evaluate_popularity(ds: Dataset, split: Split) -> dict[str, float]:
    pop = np.bincount(ds.item[split.train_rows], minlength=ds.n_items).astype(np.float32)
    return evaluate_scorer(ds, split, lambda users: np.broadcast_to(pop, (len(users), ds.n_items)))


def evaluate_ease(ds: Dataset, split: Split, lam: float = 100.0) -> dict[str, float]:
    """EASE: closed-form item-item model, B = I − P / diag(P), P = (XᵀX + λI)⁻¹."""
    x = _seen_matrix(ds, split.train_rows).astype(np.float64)
    g = x.T @ x + lam * np.eye(ds.n_items)
    p = np.linalg.inv(g)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return evaluate_scorer(ds, split, lambda users: x[users] @ b)
