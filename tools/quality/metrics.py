"""Ranking metrics at k = 10 over test users, and their summary over runs (tools/quality).

Binary relevance only; nothing here knows where a list came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

K = 10
METRICS = ("hr@10", "ndcg@10", "recall@10", "coverage@10")


def top_k(scores: np.ndarray, seen: np.ndarray, k: int = K) -> np.ndarray:
    """(m, n) scores, (m, n) bool seen -> (m, k) item indices, best first; -1 where fewer remain.

    Ties go to the lower item index."""
    s = np.where(seen, -np.inf, scores.astype(np.float64))
    m, n = s.shape
    kk = min(k, n)
    part = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (m, 1))
    ps = np.take_along_axis(s, part, axis=1)
    order = np.lexsort((part, -ps), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    top = np.where(np.isneginf(np.take_along_axis(ps, order, axis=1)), -1, top)
    if kk < k:
        top = np.hstack([top, np.full((m, k - kk), -1, dtype=top.dtype)])
    return top


def rank_metrics(
    top: np.ndarray, test_items: Sequence[np.ndarray], n_items: int, k: int = K
) -> dict[str, Any]:
    """top: (m, >= k) item indices (-1: empty slot); test_items: per user, unique item indices.

    HR@k: share of users with a test item in the list; NDCG@k: DCG of binary hits over
    the ideal DCG of min(|test|, k) hits; recall@k: hits / min(|test|, k); coverage@k:
    distinct listed items / n_items."""
    top = np.asarray(top)[:, :k]
    m = len(test_items)
    assert top.shape[0] == m, (top.shape, m)
    disc = 1.0 / np.log2(np.arange(k) + 2.0)
    ideal = np.cumsum(disc)
    hr = np.zeros(m)
    ndcg = np.zeros(m)
    recall = np.zeros(m)
    for j in range(m):
        rel = np.isin(top[j], test_items[j]) & (top[j] >= 0)
        n_rel = min(len(test_items[j]), k)
        hits = int(rel.sum())
        hr[j] = hits > 0
        ndcg[j] = float(disc[rel].sum()) / ideal[n_rel - 1] if n_rel else 0.0
        recall[j] = hits / n_rel if n_rel else 0.0
    listed = np.unique(top[top >= 0])
    return {
        "hr@10": float(hr.mean()) if m else 0.0,
        "ndcg@10": float(ndcg.mean()) if m else 0.0,
        "recall@10": float(recall.mean()) if m else 0.0,
        "coverage@10": float(listed.size / n_items) if n_items else 0.0,
        "users": int(m),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and metric: mean and sample sd (ddof 1; 0 for one run) over the runs."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in runs[0]["models"]:
        out[name] = {}
        for met in METRICS:
            v = np.asarray([r["models"][name][met] for r in runs if name in r["models"]], dtype=np.float64)
            out[name][met] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0}
    return out


def goal(summary: dict[str, dict[str, dict[str, float]]], served_key: str = "recgen") -> dict[str, Any]:
    """Served NDCG@10 >= tuned iALS, and >= EASE where EASE is stronger than iALS."""
    served = summary[served_key]["ndcg@10"]["mean"]
    ials = summary["implicit_als"]["ndcg@10"]["mean"]
    ease = summary.get("ease", {}).get("ndcg@10", {}).get("mean", -np.inf)
    target_name, target = ("ease", ease) if ease > ials else ("implicit_als", ials)
    return {
        "served_ndcg@10": served,
        "target": target_name,
        "target_ndcg@10": target,
        "gap": served - target,
        "gap_pct": 100.0 * (served - target) / target if target > 0 else None,
        "met": bool(served >= target),
    }
