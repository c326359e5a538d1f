"""Per-event and per-list metrics of the replay, and the lift of feedback over static.

One relevant item per event (the item the user rated next); nothing here
talks to a server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

K = 10


def hit_and_ndcg(ranked: Sequence[str], target: str, k: int = K) -> tuple[float, float]:
    """One relevant item: hit = it is in the top k; NDCG = 1/log2(rank + 1) then."""
    top = list(ranked[:k])
    if target not in top:
        return 0.0, 0.0
    return 1.0, 1.0 / math.log2(top.index(target) + 2)


def novelty(rows: np.ndarray, share: np.ndarray) -> float:
    """Mean self-information -log2(share) of the recommended items."""
    return float(-np.log2(share[rows]).mean()) if rows.size else 0.0


def intra_list_diversity(rows: np.ndarray, unit_factors: np.ndarray) -> float:
    """Mean pairwise (1 - cosine) of the list's item factors; 0 for < 2 items."""
    if rows.size < 2:
        return 0.0
    v = unit_factors[rows]
    sim = v @ v.T
    n = rows.size
    return float((n * (n - 1) - (sim.sum() - np.trace(sim))) / (n * (n - 1)))


def unit_rows(factors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    return factors / np.where(norms > 0, norms, 1.0)


def popularity_share(counts: np.ndarray, n_users: int) -> np.ndarray:
    """Fraction of training users who rated each item; items never rated count
    as rated once, so that their novelty is high but finite."""
    return np.maximum(counts.astype(np.float64), 1.0) / max(n_users, 1)


@dataclass
class ArmStats:
    """Per-event scores and per-list statistics of one arm in one user group."""

    hits: list[float] = field(default_factory=list)
    ndcgs: list[float] = field(default_factory=list)
    users: list[int] = field(default_factory=list)  # the user of each event, for the bootstrap
    novelty: list[float] = field(default_factory=list)
    diversity: list[float] = field(default_factory=list)
    recommended: set[int] = field(default_factory=set)
    short_lists: int = 0  # answers with fewer than K items

    def add(self, user: int, ranked_rows: np.ndarray, hit: float, ndcg: float, ctx: MetricContext) -> None:
        self.hits.append(hit)
        self.ndcgs.append(ndcg)
        self.users.append(user)
        self.novelty.append(novelty(ranked_rows, ctx.share))
        self.diversity.append(intra_list_diversity(ranked_rows, ctx.unit_factors))
        self.recommended.update(ranked_rows.tolist())
        self.short_lists += int(ranked_rows.size < K)

    def summary(self, n_items: int) -> dict[str, float | int]:
        n = len(self.hits)
        return {
            "events": n,
            "users": len(set(self.users)),
            "hit_rate@10": float(np.mean(self.hits)) if n else 0.0,
            "ndcg@10": float(np.mean(self.ndcgs)) if n else 0.0,
            "coverage@10": len(self.recommended) / n_items,
            "novelty": float(np.mean(self.novelty)) if n else 0.0,
            "intra_list_diversity": float(np.mean(self.diversity)) if n else 0.0,
            "short_lists": self.short_lists,
        }


@dataclass(frozen=True)
class MetricContext:
    item_row: dict[str, int]
    share: np.ndarray  # (n_items,) popularity share in the training period
    unit_factors: np.ndarray  # (n_items, d) item factors scaled to unit length


def lift(b: float, a: float) -> float | None:
    return None if a == 0 else b / a - 1.0


def bootstrap_lift(
    users: Sequence[int], b: Sequence[float], a: Sequence[float], n_boot: int = 1000, seed: int = 0
) -> tuple[float, float] | None:
    """95 % interval of the lift mean(b)/mean(a) - 1, resampling whole users.

    Users, not events, are the independent units: one user's events are a
    sequence and share the user's taste, so resampling events would make the
    interval too narrow.
    """
    if not users:
        return None
    uids, inv = np.unique(np.asarray(users), return_inverse=True)
    sum_b = np.bincount(inv, weights=np.asarray(b, dtype=np.float64), minlength=uids.size)
    sum_a = np.bincount(inv, weights=np.asarray(a, dtype=np.float64), minlength=uids.size)
    draw = np.random.default_rng(seed).integers(0, uids.size, size=(n_boot, uids.size))
    tot_b, tot_a = sum_b[draw].sum(axis=1), sum_a[draw].sum(axis=1)
    ok = tot_a > 0
    if not ok.any():
        return None
    lifts = tot_b[ok] / tot_a[ok] - 1.0
    return float(np.percentile(lifts, 2.5)), float(np.percentile(lifts, 97.5))
