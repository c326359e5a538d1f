"""Choosing the ALS parameters on validation, and the held-out evaluation a version reports.

Both rank users exactly as a worker will serve them: each user's fold-in input
is the version's own history of them (capped, decayed from their newest event;
`served`), so the offline table is the served one. The validation split (each
user's second-to-last item) picks the parameters; the test split (last item)
is used once, for the reported numbers, next to popularity and EASE baselines.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from export.budget import BudgetError
from export.data import Dataset
from export.ease import evaluate_ease
from export.evaluate import Histories, evaluate_mf, evaluate_popularity, leave_last_out, sample_split
from export.mf import ALSParams, train_als
from recgen.config.export import ExportConfig
from recgen.core.user_history import HistoryArrays

LOG = logging.getLogger(__name__)

# Candidates tried on a validation split (each user's second-to-last item);
# the test split (last item) is only used once, for the reported numbers.
# All near 32 factors with light L2 and low confidence: `make quality` (docs/quality.md) measured
# that 64- and 128-factor models, which the noisy one-item validation picked in 2 of 4 exports,
# lose 11-25 % NDCG@10 on a per-user random 80/20 split (0.31-0.37 vs 0.41 on ML-100K, even at
# λ 5) and gain nothing on leave-last-one-out (0.071-0.076 vs 0.077-0.078); 32 factors also
# train in a fraction of the time.
TUNING_GRID = [
    ALSParams(factors=32, reg=0.01, alpha=1.0),
    ALSParams(factors=32, reg=0.1, alpha=2.0),
    ALSParams(factors=32, reg=0.05, alpha=1.0),
    ALSParams(factors=32, reg=0.1, alpha=1.0),
    ALSParams(factors=24, reg=0.05, alpha=1.0),
]


def held_histories(ds: Dataset, rows: np.ndarray) -> HistoryArrays:
    """The histories a version built from these rows holds (capped, newest first)."""
    return HistoryArrays.build(ds.user[rows], ds.item[rows], ds.timestamp[rows], ds.n_users)


def served(held: HistoryArrays, alpha: float) -> Histories:
    """Each user's fold-in input exactly as a worker computes it for a known user (decay from
    the user's newest event, the newest HISTORY_CAP events): offline numbers = served numbers."""
    return lambda users: [held.fold_in(int(u), alpha) for u in users]


def choose_params(
    ds: Dataset, opts: ExportConfig, keep: dict[str, np.ndarray] | None = None
) -> tuple[ALSParams, list[dict[str, Any]]]:
    """Fixed params if all given; else the best of the grid on validation NDCG@10.

    Each trial ranks a fixed sample (seed opts.seed) of at most MAX_TUNING_USERS validation
    users (export.evaluate.sample_split), so tuning cost does not grow with the user count;
    each trial's result records the metrics' standard errors over that sample.
    keep: if given, receives the chosen model's item factors as "validation" (reused
    by the context step instead of training again).
    """
    grid = TUNING_GRID
    if opts.factors is not None or opts.reg is not None or opts.alpha is not None:
        base = ALSParams()
        grid = [
            ALSParams(
                factors=opts.factors or base.factors,
                reg=base.reg if opts.reg is None else opts.reg,
                alpha=base.alpha if opts.alpha is None else opts.alpha,
            )
        ]
    grid = [ALSParams(p.factors, p.reg, p.alpha, opts.iterations, opts.seed) for p in grid]
    if len(grid) == 1:
        return grid[0], []
    outer = leave_last_out(ds)
    val = leave_last_out(ds, outer.train_rows)  # hold out the second-to-last item
    val = sample_split(val, seed=opts.seed)
    val_held = held_histories(ds, val.train_rows)
    trials = []
    trained = []
    for i, p in enumerate(grid, 1):
        if opts.progress:
            LOG.info("tuning trial %d/%d: %s on %d validation users", i, len(grid), p, len(val.test_user))
        m = train_als(
            ds.user[val.train_rows],
            ds.item[val.train_rows],
            ds.n_users,
            ds.n_items,
            p,
            progress=opts.progress,
            max_memory=opts.max_memory,
        )
        trained.append(m.item_factors)
        res = evaluate_mf(
            ds,
            val,
            m.item_factors,
            p.reg,
            p.alpha,
            histories=served(val_held, p.alpha),
            max_memory=opts.max_memory,
            progress=opts.progress,
        )
        trials.append({"params": p.to_json(), "validation": res})
        LOG.info(
            "tuning %s: validation NDCG@10 %.4f ± %.4f HR@10 %.4f ± %.4f (%d users)",
            p,
            res["ndcg@10"],
            res["ndcg@10_se"],
            res["hit_rate@10"],
            res["hit_rate@10_se"],
            res["users"],
        )
    best = max(range(len(grid)), key=lambda i: trials[i]["validation"]["ndcg@10"])
    if keep is not None:
        keep["validation"] = trained[best]
    return grid[best], trials


def evaluate_all(
    ds: Dataset,
    params: ALSParams,
    opts: ExportConfig,
    keep: dict[str, np.ndarray] | None = None,
    imported: np.ndarray | None = None,
) -> dict[str, Any]:
    """imported: item factors trained elsewhere on all data, evaluated as they are (no training)."""
    split = leave_last_out(ds)
    if imported is None:
        item_factors = train_als(
            ds.user[split.train_rows],
            ds.item[split.train_rows],
            ds.n_users,
            ds.n_items,
            params,
            progress=opts.progress,
            max_memory=opts.max_memory,
        ).item_factors
    else:
        item_factors = imported
    if keep is not None:
        keep["test"] = item_factors  # reused by the context step
    limits: dict[str, Any] = {"max_memory": opts.max_memory, "progress": opts.progress}
    out: dict[str, Any] = {
        "protocol": "temporal leave-last-one-out, all ratings positive, ties in file order, "
        "all unseen items ranked",
        "mf": evaluate_mf(
            ds,
            split,
            item_factors,
            params.reg,
            params.alpha,
            histories=served(held_histories(ds, split.train_rows), params.alpha),
            **limits,
        ),
        "popularity": evaluate_popularity(ds, split, **limits),
    }
    if opts.evaluate_ease:
        try:  # a baseline only: where it does not fit, say so and go on
            out["ease"] = evaluate_ease(ds, split, max_seconds=opts.ease_max_seconds, **limits)
        except BudgetError as e:
            LOG.warning("EASE baseline skipped: %s", e)
            out["ease_skipped"] = str(e)
    return out
