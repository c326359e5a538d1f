"""Learn the context features on one split: time lifts, intent terms, weights.

For the test users of one leave-last-out split, train MF on its training rows
and build each feature's additive score term: the per-item log-lift of the
held-out interaction's local-time bucket (hour, weekday), and the simulated
intent's vector mapped into MF item space. `fit_weights` then picks each
feature's weight on that split from a fixed grid.

This module does not evaluate the held-out test split or decide what is kept
(export/context_ablation.py), and it saves nothing (export/context.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from export.data import Dataset
from export.evaluate import K, Split, user_histories
from export.mf import ALSParams, train_als
from recgen.core.context_features import HOUR_BUCKETS, hour_bucket, weekend_flag
from recgen.core.foldin import FoldIn

# Pseudo-interactions pulling an item's lifts toward 0 (no effect): an item
# with n interactions keeps about n / (n + PRIOR) of its raw log-lift.
PRIOR = 20.0
# Weights tried on the validation split; 0 (feature off) is always a candidate.
WEIGHT_GRID = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
# How users might type a genre wish; one is drawn per held-out interaction.
INTENT_TEMPLATES = ("something in {g}", "a {g} movie", "in the mood for {g}", "{g} film tonight")
FEATURES = ("hour", "weekday", "intent")


# ---------------------------------------------------------------- time lifts


def local_time_features(ts: np.ndarray, utc_offset_h: float) -> tuple[np.ndarray, np.ndarray]:
    """(hour bucket 0..HOUR_BUCKETS-1, weekend 0/1) per unix timestamp."""
    local = ts.astype(np.float64) + utc_offset_h * 3600.0
    hour = ((local // 3600.0) % 24).astype(np.int64)
    weekday = ((local // 86400.0 + 3) % 7).astype(np.int64)  # 1970-01-01 was a Thursday (3)
    return hour_bucket(hour), weekend_flag(weekday)


def fit_lift(item: np.ndarray, value: np.ndarray, n_items: int, n_values: int) -> np.ndarray:
    """(n_items, n_values) float32 shrunk log-lift of P(value | item) over P(value).

    log((c_iv + PRIOR·p_v) / ((n_i + PRIOR)·p_v)): 0 for an item never seen,
    the raw log-lift for an item with many interactions.
    """
    counts = np.zeros((n_items, n_values), np.float64)
    np.add.at(counts, (item, value), 1.0)
    p = counts.sum(axis=0) / max(counts.sum(), 1.0)  # (V,) overall share of each value
    p = np.maximum(p, 1e-9)
    n = counts.sum(axis=1, keepdims=True)
    return np.log((counts + PRIOR * p) / ((n + PRIOR) * p)).astype(np.float32)


# ---------------------------------------------------------------- intent


def simulated_intent(categories: Sequence[str], rng: np.random.Generator) -> str:
    """A typed-intent stand-in for an interaction: one of the item's genres in a template."""
    genres = [c for c in categories if c.lower() != "unknown"]
    if not genres:
        return ""
    g = genres[int(rng.integers(len(genres)))].lower()
    return INTENT_TEMPLATES[int(rng.integers(len(INTENT_TEMPLATES)))].format(g=g)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# ---------------------------------------------------------------- metrics


def per_user_metrics(scores: np.ndarray, seen: np.ndarray, test_item: np.ndarray) -> np.ndarray:
    """(2, m): hit@10 and NDCG@10 per test user (the protocol of export.evaluate)."""
    s = np.where(seen, -np.inf, scores)
    target = s[np.arange(len(s)), test_item]
    # Rank of the held-out item = items strictly better (ties go to the item: optimistic by
    # at most the tie count, as argpartition order would be arbitrary anyway).
    rank = (s > target[:, None]).sum(axis=1)
    hit = rank < K
    ndcg = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
    return np.stack([hit.astype(np.float64), ndcg])


# ---------------------------------------------------------------- one split


@dataclass
class SplitTerms:
    """Everything a variant's scores are built from, for the m test users of a split."""

    base: dict[str, np.ndarray]  # mode -> (m, n) scores without context
    terms: dict[str, dict[str, np.ndarray]]  # mode -> feature -> (m, n) term
    seen: dict[str, np.ndarray]  # mode -> (m, n) bool (cold users have seen nothing)
    test_item: np.ndarray  # (m,)

    def scores(self, mode: str, weights: dict[str, float]) -> np.ndarray:
        s = self.base[mode].copy()
        for f, w in weights.items():
            if w and f in self.terms[mode]:
                s += w * self.terms[mode][f]
        return s

    def metrics(self, mode: str, weights: dict[str, float]) -> np.ndarray:
        return per_user_metrics(self.scores(mode, weights), self.seen[mode], self.test_item)


def _held_out_rows(ds: Dataset, base_rows: np.ndarray, split: Split) -> np.ndarray:
    """The row of each test user's held-out interaction, aligned with split.test_user."""
    ho = np.setdiff1d(base_rows, split.train_rows)
    by_user = np.full(ds.n_users, -1, np.int64)
    by_user[ds.user[ho]] = ho
    rows = by_user[split.test_user]
    assert (rows >= 0).all() and (ds.item[rows] == split.test_item).all(), "held-out rows misaligned"
    return rows


def split_terms(
    ds: Dataset,
    base_rows: np.ndarray,
    split: Split,
    params: ALSParams,
    utc_offset_h: float,
    intent_vectors: np.ndarray | None,
    item_emb: np.ndarray | None,
    item_factors: np.ndarray | None = None,
) -> SplitTerms:
    """Train on the split's training rows and build each feature's term for its test users.

    intent_vectors: (m, e) embeddings of the test users' simulated intents (zero rows
    where there is none); item_emb: (n, e) item text embeddings for the content map.
    """
    n = ds.n_items
    tr = split.train_rows
    if item_factors is None:
        item_factors = train_als(ds.user[tr], ds.item[tr], ds.n_users, n, params).item_factors
    V = item_factors
    fold = FoldIn(V, params.reg)
    hist = user_histories(ds, tr, params.alpha)
    U = fold.user_vectors([hist[u] for u in split.test_user])  # (m, d)
    seen = np.zeros((len(split.test_user), n), bool)
    pos = np.full(ds.n_users, -1, np.int64)
    pos[split.test_user] = np.arange(len(split.test_user))
    keep = pos[ds.user[tr]] >= 0
    seen[pos[ds.user[tr]][keep], ds.item[tr][keep]] = True
    pop = np.bincount(ds.item[tr], minlength=n).astype(np.float32)

    base = {"warm": U @ V.T, "cold": np.broadcast_to(np.log1p(pop), (len(U), n)).astype(np.float32)}
    terms: dict[str, dict[str, np.ndarray]] = {"warm": {}, "cold": {}}
    if ds.has_timestamps:
        hb, we = local_time_features(ds.timestamp, utc_offset_h)
        h_lift = fit_lift(ds.item[tr], hb[tr], n, HOUR_BUCKETS)
        w_lift = fit_lift(ds.item[tr], we[tr], n, 2)
        rows = _held_out_rows(ds, base_rows, split)
        for mode in ("warm", "cold"):
            terms[mode]["hour"] = h_lift[:, hb[rows]].T  # (m, n)
            terms[mode]["weekday"] = w_lift[:, we[rows]].T
    if intent_vectors is not None and item_emb is not None:
        from export.content_map import fit_content_map
        from recgen.core.content_map import apply_content_map

        counts = np.bincount(ds.item[tr], minlength=n).astype(np.float64)
        W, _ = fit_content_map(item_emb, V, weights=np.where(counts >= 5, np.log1p(counts), 0.0))
        has = np.linalg.norm(intent_vectors, axis=1) > 0
        q = np.where(has[:, None], unit_rows(apply_content_map(W, intent_vectors)), 0.0)  # (m, d)
        # Warm: u' = u + λ·|u|·q̂, so the term is |u|·(V q̂); cold: cosine of item and intent.
        terms["warm"]["intent"] = np.linalg.norm(U, axis=1, keepdims=True) * (q @ V.T)
        terms["cold"]["intent"] = q @ unit_rows(V).T
    return SplitTerms(base, terms, {"warm": seen, "cold": np.zeros_like(seen)}, split.test_item)


def fit_weights(st: SplitTerms) -> dict[str, dict[str, float]]:
    """Per mode and feature, the grid weight with the best mean NDCG@10 (others off)."""
    out: dict[str, dict[str, float]] = {}
    for mode in ("warm", "cold"):
        out[mode] = {}
        for f in FEATURES:
            if f not in st.terms[mode]:
                continue
            ndcg = [st.metrics(mode, {f: w})[1].mean() for w in WEIGHT_GRID]
            out[mode][f] = WEIGHT_GRID[int(np.argmax(ndcg))]  # first best: ties keep it off
    return out
