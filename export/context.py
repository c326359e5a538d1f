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
*simulated* intent (see `export.context_features.simulated_intent`):
MovieLens has no typed intents.

This module is the export step: it wires the two halves together and saves
what the version serves. Learning the features on a split (time lifts,
intent terms, weight fitting) is export/context_features.py; the held-out
ablation, keep rule and report printing are export/context_ablation.py.
It trains nothing but small count tables; it does not serve
(worker/context.py applies what it learns) and it does not write the manifest.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.context_ablation import ablation, format_table, keep_features, main, variant_row
from export.context_features import fit_lift, fit_weights, local_time_features, simulated_intent, split_terms
from export.data import Dataset
from export.evaluate import Split, leave_last_out
from export.mf import ALSParams
from recgen.core.content_map import CONTENT_MAP_FILE
from recgen.core.context_features import HOUR_BUCKETS
from recgen.core.formats import CONTEXT_FILE, CONTEXT_FORMAT, HOUR_LIFT_FILE, WEEKEND_LIFT_FILE

LOG = logging.getLogger(__name__)

BOOTSTRAP = 1000
# The evaluation holds dense (users, items) score matrices: at most this many cells
# per matrix (users sampled beyond it; MovieLens-100K's 943 x 1,682 fits whole).
MAX_EVAL_CELLS = 20_000_000
# MovieLens-100K timestamps are UTC; its raters were mostly in the USA. Local
# hour is taken as UTC - 6 h (US Central), an approximation; other data is
# read as already local (UTC offset 0) unless told otherwise.
ML100K_UTC_OFFSET_H = -6.0


@dataclass
class ContextOptions:
    utc_offset_hours: float | None = None  # None: ML100K_UTC_OFFSET_H for MovieLens, else 0
    bootstrap: int = BOOTSTRAP
    seed: int = 0


def _sample(split: Split, max_users: int, rng: np.random.Generator) -> Split:
    if len(split.test_user) <= max_users:
        return split
    idx = np.sort(rng.choice(len(split.test_user), max_users, replace=False))
    return Split(split.train_rows, split.test_user[idx], split.test_item[idx])


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
    if encoder_dir is not None and (encoder_dir / CONTENT_MAP_FILE).is_file():
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

    features, served = keep_features(table, weights)
    # What the version serves (kept features only), on the same test users.
    for mode in ("warm", "cold"):
        table[mode]["served"] = variant_row(st_test, mode, served[mode], opts.bootstrap, opts.seed)
    del st_test

    out_dir.mkdir(parents=True, exist_ok=True)
    if ds.has_timestamps:
        hb, we = local_time_features(ds.timestamp, offset)
        if any(served[m]["hour"] for m in served):
            np.save(out_dir / HOUR_LIFT_FILE, fit_lift(ds.item, hb, ds.n_items, HOUR_BUCKETS))
        if any(served[m]["weekday"] for m in served):
            np.save(out_dir / WEEKEND_LIFT_FILE, fit_lift(ds.item, we, ds.n_items, 2))
    config = {
        "format": CONTEXT_FORMAT,
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


# fit_lift, local_time_features and format_table are re-exported for callers of this module.
__all__ = [
    "ContextOptions",
    "fit_lift",
    "format_table",
    "learn_context",
    "local_time_features",
]


if __name__ == "__main__":
    raise SystemExit(main())
