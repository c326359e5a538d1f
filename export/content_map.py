"""Fit the linear map from content-text embeddings to MF item factors.

Items that have interactions have both a text embedding and an ALS factor;
a ridge regression between the two lets a brand-new item (text only) get a
stand-in factor. The regularisation strength is picked on a held-out share of
those items, and the report says how useful the map is in the terms that
matter for retrieval: cosine to the true factor and whether the mapped vector
lands among the same inner-product neighbours.

Ridge predictions shrink towards the mean factor, so their norms are too
small to compete with trained items on inner product. Given user vectors, the
same held-out share fits a calibration scale (`fit_exposure_scale`): the
factor that makes held-out mapped vectors reach the users' top-k as often as
the held-out items' true factors do. The export stores it beside the map and
the worker multiplies stand-in vectors by it
(`recgen.core.content_map.ContentCalibration`; tools/new_items.py measures it).

numpy only. Applying the map lives in `recgen.core.content_map` so the serving
path can import it without this module's (trivial) extras.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from recgen.core.content_map import ContentCalibration, apply_content_map

LOG = logging.getLogger(__name__)

__all__ = ["apply_content_map", "fit_content_map", "fit_exposure_scale"]

# Grid of l2 values, relative to the mean eigenvalue of the centred (weighted)
# Gram matrix, so the same grid suits any number of items and any weight scale.
_L2_GRID_REL = np.logspace(-4, 2, 13)
_EPS = 1e-12
SCALE_BOUNDS = (0.125, 8.0)  # a calibration scale outside this is clipped (and logged)


def fit_exposure_scale(
    pred: np.ndarray,
    rows: np.ndarray,
    factors: np.ndarray,
    queries: np.ndarray,
    seen: list[np.ndarray] | None = None,
    k: int = 10,
    chunk_cells: int = 1 << 24,
) -> tuple[float, dict[str, float]]:
    """The scale s for which s·pred reaches the queries' top k as often as the true factors do.

    pred: (m, d) mapped vectors of the held-out items `rows` of `factors` (n, d);
    queries: (q, d) user vectors; seen: per query the item rows that user consumed (never
    ranked for them: left out of the competition and of the counted pairs). A held-out item
    "reaches" a query's top k when its score beats the query's k-th best score over the
    other, unseen items (each held-out item judged alone, the same way on both sides).
    Exposure grows with s, so s is the order statistic of the per-pair thresholds that
    admits as many pairs as the true factors reach. Returns s (clipped to SCALE_BOUNDS)
    and the exposures, per query.
    """
    P = np.asarray(pred, np.float64)
    F = np.asarray(factors, np.float32)  # float32 scores: the worker's precision, half the memory
    Q = np.asarray(queries, np.float32)
    P = P.astype(np.float32)
    rows = np.asarray(rows, np.int64)
    if P.ndim != 2 or P.shape != (len(rows), F.shape[1]) or Q.ndim != 2 or Q.shape[1] != F.shape[1]:
        raise ValueError(
            f"pred {P.shape}, rows {rows.shape}, factors {F.shape}, queries {Q.shape} do not fit"
        )
    if not len(Q) or len(F) - len(rows) < k:
        raise ValueError(f"need queries and more than {k} competing items")
    if seen is not None and len(seen) != len(Q):
        raise ValueError(f"seen has {len(seen)} entries for {len(Q)} queries")
    is_held = np.zeros(len(F), bool)
    is_held[rows] = True
    col = np.full(len(F), -1, np.int64)
    col[rows] = np.arange(len(rows))
    T = F[rows]
    chunk = max(1, chunk_cells // len(F))
    ratios, n_always, target, n_raw, thr_all, x_all, ok_all = [], 0, 0, 0, [], [], []
    for s0 in range(0, len(Q), chunk):
        q = Q[s0 : s0 + chunk]
        sc = q @ F.T  # (c, n)
        ok = np.ones((len(q), len(rows)), bool)  # pairs that count: the user did not consume it
        if seen is not None:
            for b, items in enumerate(seen[s0 : s0 + len(q)]):
                items = np.asarray(items, np.int64)
                sc[b, items] = -np.inf
                held = col[items[is_held[items]]]
                ok[b, held] = False
        sc[:, is_held] = -np.inf
        thr = -np.partition(-sc, k - 1, axis=1)[:, k - 1 : k]  # (c, 1); -inf if fewer than k left
        x = q @ P.T  # s·x > thr  <=>  s > thr / x  where x > 0
        target += int((((q @ T.T) > thr) & ok).sum())
        n_raw += int(((x > thr) & ok).sum())
        n_always += int((ok & (x > 0) & (thr <= 0)).sum())
        m = ok & (x > 0) & (thr > 0)
        ratios.append((np.broadcast_to(thr, x.shape) / np.where(m, x, 1.0))[m])
        thr_all.append(thr)
        x_all.append(x)
        ok_all.append(ok)
    need = np.sort(np.concatenate(ratios))
    lo, hi = SCALE_BOUNDS
    extra = target - n_always
    if extra <= 0:
        s = lo
    elif extra > len(need):
        s = hi
    else:  # just above the extra-th smallest threshold: exactly `extra` more pairs admitted
        s = float(need[extra - 1]) * (1.0 + 1e-9)
    if not lo <= s <= hi:
        LOG.warning("content calibration: scale %.3g clipped to [%g, %g]", s, lo, hi)
    s = float(np.clip(s, lo, hi))
    n_cal = sum(int(((s * x > t) & o).sum()) for x, t, o in zip(x_all, thr_all, ok_all, strict=True))
    report = {
        "k": k,
        "n_queries": int(len(Q)),
        "n_items": int(len(P)),
        "exposure_true": target / len(Q),
        "exposure_raw": n_raw / len(Q),
        "exposure_calibrated": n_cal / len(Q),
    }
    return s, report


class _Ridge:
    """Weighted ridge with an unpenalised bias; one eigendecomposition, any l2."""

    def __init__(self, X: np.ndarray, Y: np.ndarray, w: np.ndarray) -> None:
        wn = w / w.sum()
        self.x_mean = wn @ X
        self.y_mean = wn @ Y
        Xc = X - self.x_mean
        Yc = Y - self.y_mean
        gram = Xc.T @ (Xc * w[:, None])
        evals, self.evecs = np.linalg.eigh(gram)
        # eigh can return tiny negative values for a rank-deficient Gram.
        self.evals = np.clip(evals, 0.0, None)
        self.proj = self.evecs.T @ (Xc.T @ (Yc * w[:, None]))
        self.mean_eval = float(self.evals.mean())

    def solve(self, l2: float) -> np.ndarray:
        """(dim + 1, d): coefficients, then the bias row."""
        B = self.evecs @ (self.proj / (self.evals + l2)[:, None])
        bias = self.y_mean - self.x_mean @ B
        return np.vstack([B, bias[None, :]])


def _r2(pred: np.ndarray, true: np.ndarray) -> float:
    """Pooled over all factor dimensions (share of total variance explained)."""
    sse = float(((true - pred) ** 2).sum())
    sst = float(((true - true.mean(axis=0)) ** 2).sum())
    return 1.0 - sse / max(sst, _EPS)


def _mean_cosine(pred: np.ndarray, true: np.ndarray) -> float:
    num = (pred * true).sum(axis=1)
    den = np.linalg.norm(pred, axis=1) * np.linalg.norm(true, axis=1)
    return float((num / np.maximum(den, _EPS)).mean())


def _topk_ip(
    queries: np.ndarray, items: np.ndarray, self_idx: np.ndarray, k: int, chunk: int = 1024
) -> np.ndarray:
    """Top-k item rows by inner product for each query, excluding the query's own item."""
    out = np.empty((len(queries), k), dtype=np.int64)
    rows = np.arange(min(chunk, len(queries)))
    for s in range(0, len(queries), chunk):
        q = queries[s : s + chunk]
        scores = q @ items.T
        scores[rows[: len(q)], self_idx[s : s + chunk]] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out[s : s + chunk] = part
    return out


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: |a ∩ b| / k for two (n, k) neighbour lists."""
    k = a.shape[1]
    return np.array([len(np.intersect1d(x, y, assume_unique=True)) / k for x, y in zip(a, b, strict=True)])


def _rank_quality(
    pred: np.ndarray, true: np.ndarray, self_idx: np.ndarray, all_factors: np.ndarray, k: int
) -> dict[str, float]:
    nn_true = _topk_ip(true, all_factors, self_idx, k)
    nn_pred = _topk_ip(pred, all_factors, self_idx, k)
    ov = _overlap(nn_true, nn_pred)
    return {f"nn_overlap@{k}": float(ov.mean()), f"nn_any_overlap@{k}": float((ov > 0).mean())}


def fit_content_map(
    content_emb: np.ndarray,
    item_factors: np.ndarray,
    weights: np.ndarray | None = None,
    l2: float | None = None,
    *,
    holdout: float = 0.2,
    k: int = 10,
    max_rank_eval: int = 2000,
    seed: int = 0,
    queries: np.ndarray | None = None,
    seen: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Ridge regression ``item_factors ≈ content_emb @ W[:-1] + W[-1]``.

    Args:
        content_emb: (n, dim) text embeddings, row i is item i.
        item_factors: (n, d) MF item factors, same row order.
        weights: per-item sample weights (e.g. ``log1p(interaction count)``);
            items with weight 0 have no trustworthy factor and are left out
            of the fit and of the evaluation. ``None``: every item, weight 1.
        l2: ridge strength; ``None`` picks it from a grid by the held-out
            mean cosine (what inner-product retrieval cares about, unlike
            the raw squared error, which rewards shrinking towards the mean).
        holdout: share of the fitted items held out for choosing l2 and for
            the report. The returned map is refitted on all of them.
        k: neighbour-list length for the rank-quality metric.
        max_rank_eval: held-out items scored for rank quality (it costs an
            all-items inner product per item).
        queries: (q, d) user vectors (fold-in, as served) for the calibration
            scale (`fit_exposure_scale` on the held-out items, top-k against
            every other item); ``None``: no calibration is fitted.
        seen: per query, the item rows that user consumed (not ranked for them).

    Returns:
        ``W`` float32 (dim + 1, d) with the bias as the last row, and a
        report: the chosen l2, the grid, held-out R² / mean cosine / overlap
        of the top-k inner-product neighbour lists of the true and mapped
        factors, and the same for a content-blind baseline (the mean factor).
        Held-out metrics are unweighted averages over held-out items.
        ``report["calibration"]``: the `ContentCalibration` (JSON) or None
        without queries; ``report["norms"]``: held-out median norms, true,
        mapped and calibrated.
    """
    X = np.asarray(content_emb, dtype=np.float64)
    Y = np.asarray(item_factors, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
        raise ValueError(f"content_emb {X.shape} and item_factors {Y.shape} must be 2-D with equal rows")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise ValueError("content embeddings and item factors must be finite")
    w = np.ones(len(X)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(X),) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be {len(X)} finite non-negative values")
    if l2 is not None and not l2 > 0:
        raise ValueError(f"l2 must be positive, got {l2}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    fit_idx = np.flatnonzero(w > 0)
    if len(fit_idx) < 10:
        raise ValueError(f"need at least 10 items with positive weight, got {len(fit_idx)}")
    if k >= len(X):
        raise ValueError(f"k={k} needs more than {k} items, got {len(X)}")
    if queries is not None and (np.ndim(queries) != 2 or np.shape(queries)[1] != Y.shape[1]):
        raise ValueError(f"queries must be (q, {Y.shape[1]}), got {np.shape(queries)}")

    rng = np.random.default_rng(seed)
    perm = rng.permutation(fit_idx)
    n_val = max(2, int(round(holdout * len(perm))))
    val, tr = perm[:n_val], perm[n_val:]

    ridge = _Ridge(X[tr], Y[tr], w[tr])
    grid = []
    if l2 is None:
        for rel in _L2_GRID_REL:
            lam = float(rel * max(ridge.mean_eval, _EPS))
            pred = apply_content_map(ridge.solve(lam), X[val]).astype(np.float64)
            grid.append({"l2": lam, "r2": _r2(pred, Y[val]), "cosine": _mean_cosine(pred, Y[val])})
        best = max(range(len(grid)), key=lambda i: grid[i]["cosine"])
        if best in (0, len(grid) - 1):
            LOG.warning("content map: chosen l2 %.3g is at the edge of the grid", grid[best]["l2"])
        chosen = grid[best]["l2"]
    else:
        chosen = float(l2)

    W_tr = ridge.solve(chosen)
    pred_val = apply_content_map(W_tr, X[val]).astype(np.float64)
    pred_tr = apply_content_map(W_tr, X[tr]).astype(np.float64)
    # Rank quality on a sample of held-out items: neighbours among ALL items.
    ev = rng.permutation(len(val))[:max_rank_eval]
    heldout = {
        "r2": _r2(pred_val, Y[val]),
        "cosine": _mean_cosine(pred_val, Y[val]),
        **_rank_quality(pred_val[ev], Y[val][ev], val[ev], Y, k),
    }
    # Content-blind baseline: every new item gets the mean factor. A map that
    # does not beat this has learned nothing from the text.
    mean_vec = np.broadcast_to(ridge.y_mean, (len(val), Y.shape[1]))
    baseline = {
        "r2": _r2(mean_vec, Y[val]),
        "cosine": _mean_cosine(mean_vec, Y[val]),
        **_rank_quality(mean_vec[ev], Y[val][ev], val[ev], Y, k),
    }

    # Calibration on held-out items: their mapped vectors are what a new item's will be
    # (in-sample predictions fit a little better), competing with every other item.
    calibration = None
    if queries is not None:
        # The rank-quality sample of held-out items (at most max_rank_eval) bounds the cost.
        scale, exposure = fit_exposure_scale(pred_val[ev], val[ev], Y, queries, seen, k=k)
        calibration = ContentCalibration(scale)
    mapped_norms = np.linalg.norm(pred_val, axis=1)
    norms = {
        "heldout_true_median": float(np.median(np.linalg.norm(Y[val], axis=1))),
        "heldout_mapped_median": float(np.median(mapped_norms)),
        "heldout_calibrated_median": float(np.median(mapped_norms) * (1.0 if calibration is None else scale)),
    }

    W = _Ridge(X[fit_idx], Y[fit_idx], w[fit_idx]).solve(chosen).astype(np.float32)
    report: dict[str, Any] = {
        "dim": int(X.shape[1]),
        "factors": int(Y.shape[1]),
        "n_items": int(len(X)),
        "n_fit": int(len(fit_idx)),
        "n_train": int(len(tr)),
        "n_heldout": int(len(val)),
        "n_rank_eval": int(len(ev)),
        "l2": chosen,
        "l2_selected_by": "heldout_cosine" if l2 is None else "given",
        "grid": grid,
        "train": {"r2": _r2(pred_tr, Y[tr]), "cosine": _mean_cosine(pred_tr, Y[tr])},
        "heldout": heldout,
        "baseline_mean_factor": baseline,
        "calibration": None if calibration is None else {**calibration.to_json(), "exposure": exposure},
        "norms": norms,
    }
    if calibration is not None:
        LOG.info(
            "content map: calibration scale %.3f: held-out items in users' top %d %.3f times per user "
            "(true factors), %.3f raw, %.3f calibrated",
            calibration.scale,
            k,
            exposure["exposure_true"],
            exposure["exposure_raw"],
            exposure["exposure_calibrated"],
        )
    LOG.info(
        "content map: l2=%.3g held-out R²=%.3f cosine=%.3f nn_overlap@%d=%.3f "
        "(mean-factor baseline cosine=%.3f nn_overlap@%d=%.3f)",
        chosen,
        heldout["r2"],
        heldout["cosine"],
        k,
        heldout[f"nn_overlap@{k}"],
        baseline["cosine"],
        k,
        baseline[f"nn_overlap@{k}"],
    )
    return W, report
