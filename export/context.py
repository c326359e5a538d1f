"""Learn what request context adds to ranking, and keep only what helps.

Seed section 4.3 names time, place and device as context. What the data can
teach decides what is used:

- time of day and day of week, where interactions have timestamps: per item,
  the log-lift of each local-time bucket (six 4-hour blocks; weekend vs
  weekday) against the item's own overall rate, shrunk toward 0 for items
  with few interactions; added to the ranking score with a weight;
- free-text intent, where the version has a text encoder and content map:
  the intent's embedding mapped into MF item space (an "intent vector"),
  blended into the user vector (warm users) or scored by cosine (cold users);
- device and locale: the default data (MovieLens-100K) has neither, so they
  are recorded as not learned and ignored at serve time.

Weights are fitted on the validation split (each user's second-to-last
interaction, the export's tuning split); the held-out test split (last
interaction) then gives an ablation with bootstrap confidence intervals over
users, and a feature whose NDCG@10 gain's interval does not lie above zero
is switched off in what the version serves. Intent is evaluated with a
*simulated* intent (see `simulated_intent`): MovieLens has no typed intents.

This module trains nothing but small count tables; it does not serve
(worker/context.py applies what it learns) and it does not write the manifest.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.data import Dataset
from export.evaluate import K, Split, leave_last_out, user_histories
from export.mf import ALSParams, train_als
from worker.context import (
    CONTEXT_DIR,
    CONTEXT_FILE,
    FORMAT,
    HOUR_BUCKETS,
    HOUR_LIFT_FILE,
    WEEKEND_LIFT_FILE,
    hour_bucket,
    weekend_flag,
)
from worker.foldin import FoldIn

LOG = logging.getLogger(__name__)

# Pseudo-interactions pulling an item's lifts toward 0 (no effect): an item
# with n interactions keeps about n / (n + PRIOR) of its raw log-lift.
PRIOR = 20.0
# Weights tried on the validation split; 0 (feature off) is always a candidate.
WEIGHT_GRID = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
BOOTSTRAP = 1000
# The evaluation holds dense (users, items) score matrices: at most this many cells
# per matrix (users sampled beyond it; MovieLens-100K's 943 x 1,682 fits whole).
MAX_EVAL_CELLS = 20_000_000
# MovieLens-100K timestamps are UTC; its raters were mostly in the USA. Local
# hour is taken as UTC - 6 h (US Central), an approximation; other data is
# read as already local (UTC offset 0) unless told otherwise.
ML100K_UTC_OFFSET_H = -6.0
# How users might type a genre wish; one is drawn per held-out interaction.
INTENT_TEMPLATES = ("something in {g}", "a {g} movie", "in the mood for {g}", "{g} film tonight")
FEATURES = ("hour", "weekday", "intent")
VARIANTS = {
    "none": (),
    "+hour": ("hour",),
    "+weekday": ("weekday",),
    "+hour+weekday": ("hour", "weekday"),
    "+intent": ("intent",),
    "all": FEATURES,
}


@dataclass
class ContextOptions:
    utc_offset_hours: float | None = None  # None: ML100K_UTC_OFFSET_H for MovieLens, else 0
    bootstrap: int = BOOTSTRAP
    seed: int = 0


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


def bootstrap_ci(diff: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean of per-user paired differences."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


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


def _sample(split: Split, max_users: int, rng: np.random.Generator) -> Split:
    if len(split.test_user) <= max_users:
        return split
    idx = np.sort(rng.choice(len(split.test_user), max_users, replace=False))
    return Split(split.train_rows, split.test_user[idx], split.test_item[idx])


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
        from worker.content_map import apply_content_map

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


def variant_row(
    st: SplitTerms, mode: str, weights: dict[str, float], n_boot: int, seed: int
) -> dict[str, Any]:
    """HR@10 / NDCG@10 with these weights, and the gain over no context with its 95% interval."""
    m = st.metrics(mode, weights)
    row: dict[str, Any] = {"hit_rate@10": float(m[0].mean()), "ndcg@10": float(m[1].mean())}
    if any(weights.values()):
        ref = st.metrics(mode, {})
        for i, key in enumerate(("hit_rate@10", "ndcg@10")):
            d = m[i] - ref[i]
            lo, hi = bootstrap_ci(d, n_boot, seed)
            row[f"{key}_gain"] = float(d.mean())
            row[f"{key}_gain_ci95"] = [lo, hi]
    return row


def ablation(st: SplitTerms, weights: dict[str, dict[str, float]], n_boot: int, seed: int) -> dict[str, Any]:
    """One row per variant (features at their fitted weights, the rest off), per mode."""
    table: dict[str, Any] = {}
    for mode in ("warm", "cold"):
        rows: dict[str, Any] = {}
        for name, feats in VARIANTS.items():
            if any(f not in weights[mode] for f in feats):
                continue  # a feature this data cannot have
            rows[name] = variant_row(st, mode, {f: weights[mode][f] for f in feats}, n_boot, seed)
            if feats and "ndcg@10_gain" not in rows[name]:  # fitted off: the same as none
                rows[name].update({"hit_rate@10_gain": 0.0, "ndcg@10_gain": 0.0})
                rows[name].update({"hit_rate@10_gain_ci95": [0.0, 0.0], "ndcg@10_gain_ci95": [0.0, 0.0]})
        table[mode] = rows
    table["users"] = int(len(st.test_item))
    return table


# ---------------------------------------------------------------- the export step


def learn_context(
    ds: Dataset,
    params: ALSParams,
    out_dir: Path,
    encoder_dir: Path | None = None,
    opts: ContextOptions | None = None,
    item_emb: np.ndarray | None = None,
    split_factors: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Fit, evaluate and save the context model into out_dir; returns the report for the manifest.

    encoder_dir: the version's encoder folder (with its content map), or None: no intent.
    item_emb: (n, e) the catalog's text embeddings if the caller has them (else encoded here).
    split_factors: item factors the export already trained with `params` on the validation
    ("validation") and test ("test") training rows; missing ones are trained here.
    """
    opts = opts or ContextOptions()
    t0 = time.perf_counter()
    offset = opts.utc_offset_hours
    if offset is None:
        offset = ML100K_UTC_OFFSET_H if ds.source.startswith("movielens-100k") else 0.0
    rng = np.random.default_rng(opts.seed)
    max_users = max(100, MAX_EVAL_CELLS // max(ds.n_items, 1))
    outer = leave_last_out(ds)
    val = _sample(leave_last_out(ds, outer.train_rows), max_users, rng)
    outer = _sample(outer, max_users, rng)

    encoder = None
    if encoder_dir is not None and (encoder_dir / "content_map.npy").is_file():
        from recgen.repository import item_text
        from worker.encoder import TextEncoder

        encoder = TextEncoder(encoder_dir, threads=2)
        if item_emb is None:
            item_emb = encoder.encode([item_text(it) for it in ds.items])
    else:
        item_emb = None

    def intents(base_rows: np.ndarray, split: Split, seed: int) -> np.ndarray | None:
        if encoder is None:
            return None
        rng = np.random.default_rng(seed)
        texts = [simulated_intent(ds.items[i].categories, rng) for i in split.test_item]
        uniq = sorted({t for t in texts if t})
        emb = encoder.encode(uniq) if uniq else np.zeros((0, encoder.dim), np.float32)
        at = {t: i for i, t in enumerate(uniq)}
        out = np.zeros((len(texts), encoder.dim), np.float32)
        for r, t in enumerate(texts):
            if t:
                out[r] = emb[at[t]]
        return out

    all_rows = np.arange(len(ds))
    sf = split_factors or {}
    st_val = split_terms(
        ds,
        outer.train_rows,
        val,
        params,
        offset,
        intents(outer.train_rows, val, opts.seed),
        item_emb,
        sf.get("validation"),
    )
    weights = fit_weights(st_val)
    del st_val
    st_test = split_terms(
        ds, all_rows, outer, params, offset, intents(all_rows, outer, opts.seed + 1), item_emb, sf.get("test")
    )
    table = ablation(st_test, weights, opts.bootstrap, opts.seed)

    # Keep a feature only where its own gain on the test split is surely positive.
    features: dict[str, Any] = {}
    served: dict[str, dict[str, float]] = {"warm": {}, "cold": {}}
    for f in FEATURES:
        status = {}
        for mode in ("warm", "cold"):
            variant = {"hour": "+hour", "weekday": "+weekday", "intent": "+intent"}[f]
            row = table[mode].get(variant)
            if row is None:
                status[mode] = "not learned (no timestamps)" if f != "intent" else "not learned (no encoder)"
                served[mode][f] = 0.0
            elif weights[mode][f] == 0.0:
                status[mode] = "off (no gain on validation)"
                served[mode][f] = 0.0
            elif row["ndcg@10_gain_ci95"][0] <= 0.0:
                status[mode] = "off (test gain's 95% interval includes 0 or is negative)"
                served[mode][f] = 0.0
            else:
                status[mode] = "kept"
                served[mode][f] = weights[mode][f]
        features[f] = status
    # What the version serves (kept features only), on the same test users.
    for mode in ("warm", "cold"):
        table[mode]["served"] = variant_row(st_test, mode, served[mode], opts.bootstrap, opts.seed)
    del st_test
    features["device"] = {"warm": "not learned (no data)", "cold": "not learned (no data)"}
    features["locale"] = {"warm": "not learned (no data)", "cold": "not learned (no data)"}

    out_dir.mkdir(parents=True, exist_ok=True)
    if ds.has_timestamps:
        hb, we = local_time_features(ds.timestamp, offset)
        if any(served[m]["hour"] for m in served):
            np.save(out_dir / HOUR_LIFT_FILE, fit_lift(ds.item, hb, ds.n_items, HOUR_BUCKETS))
        if any(served[m]["weekday"] for m in served):
            np.save(out_dir / WEEKEND_LIFT_FILE, fit_lift(ds.item, we, ds.n_items, 2))
    config = {
        "format": FORMAT,
        "hour_buckets": HOUR_BUCKETS,
        "utc_offset_hours_assumed": offset,
        "weights": served,
        "features": features,
    }
    (out_dir / CONTEXT_FILE).write_text(json.dumps(config, indent=2) + "\n")
    report = {
        "protocol": "weights fitted on the validation split (second-to-last interaction), "
        "ablation on the test split (last interaction); intent is simulated from the held-out "
        "item's genre; 95% bootstrap intervals over users of the paired gain vs 'none'",
        "fitted_weights": weights,
        "served_weights": served,
        "features": features,
        "ablation": table,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    LOG.info("context: %s (%.1f s)", json.dumps(features), time.perf_counter() - t0)
    return report


__all__ = ["CONTEXT_DIR", "ContextOptions", "learn_context"]


def format_table(report: dict[str, Any]) -> str:
    """The ablation as a Markdown table (docs/context.md is made from this)."""

    def ci(row: dict[str, Any], key: str) -> str:
        if f"{key}_gain" not in row:
            return "—"
        lo, hi = row[f"{key}_gain_ci95"]
        return f"{row[f'{key}_gain']:+.4f} [{lo:+.4f}, {hi:+.4f}]"

    lines = [
        "| users | variant | HR@10 | NDCG@10 | HR@10 gain [95% CI] | NDCG@10 gain [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("warm", "cold"):
        for name, row in report["ablation"][mode].items():
            lines.append(
                f"| {mode} | {name} | {row['hit_rate@10']:.4f} | {row['ndcg@10']:.4f} "
                f"| {ci(row, 'hit_rate@10')} | {ci(row, 'ndcg@10')} |"
            )
    lines.append("")
    lines.append("| feature | warm users | cold users |")
    lines.append("|---|---|---|")
    for f, st in report["features"].items():
        cells = []
        for mode in ("warm", "cold"):
            w = report["served_weights"][mode].get(f)
            cells.append(st[mode] + (f" (weight {w:g})" if w else ""))
        lines.append(f"| {f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m export.context MODELS_DIR [VERSION]`: print a version's context ablation."""
    import argparse

    from recgen.repository import ModelRepository

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("models")
    ap.add_argument("version", nargs="?")
    args = ap.parse_args(argv)
    mv = ModelRepository(args.models).open(args.version, verify=False)
    report = mv.manifest.metrics.get("context")
    if report is None:
        print(f"{mv.name}: no context step in this version")
        return 1
    print(f"model version {mv.name}: {report['ablation']['users']} held-out users")
    print(format_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
