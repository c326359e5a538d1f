"""The export pipeline's content step: text encoder + map into MF item space.

Exports the packaged MiniLM encoder to ONNX, embeds every catalog item's
text ("Title (year). Genres: A, B. <text>") with the same runtime encoder the
worker uses, and fits the ridge map from embeddings to MF item factors on
items with interactions, so an item known only by its text can be placed
among the others (cold items, live catalog updates). Beside the map it
writes the calibration scale fitted on held-out items against fold-in user
vectors (``content_calibration.json``, `recgen.core.content_map.ContentCalibration`):
the worker multiplies stand-in vectors by it so that they reach users' top-k
about as often as trained items with the same taste (tools/new_items.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.content_map import fit_content_map
from export.data import Dataset
from export.encoder import export_encoder
from recgen.core.content_map import CALIBRATION_FILE, CONTENT_MAP_FILE, ContentCalibration
from recgen.core.foldin import FoldIn
from recgen.repository import item_text
from worker.encoder import TextEncoder

LOG = logging.getLogger(__name__)

CALIBRATION_USERS = 2000  # fold-in user vectors the calibration scale is fitted against, at most
# The fold-in used for those users when the caller does not pass the version's own ALS
# parameters: what export's tuning picks on MovieLens-100K. The scale depends on the
# users' directions only, which these barely move (tools/new_items.py).
CALIBRATION_REG = 0.01
CALIBRATION_ALPHA = 1.0


def calibration_users(
    ds: Dataset,
    factors: np.ndarray,
    reg: float,
    alpha: float,
    rows: np.ndarray | None = None,
    n: int = CALIBRATION_USERS,
    seed: int = 0,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(≤ n, d) fold-in vectors of a fixed sample of users with interactions (among `rows`,
    default all), the way the worker folds them in, and each one's consumed item rows."""
    from export.evaluate import fold_in, user_histories

    hist = user_histories(ds, np.arange(len(ds)) if rows is None else rows, alpha)
    have = np.flatnonzero([len(r) > 0 for r, _ in hist])
    pick = np.sort(np.random.default_rng(seed).permutation(have)[:n])
    sample = [hist[i] for i in pick]
    return fold_in(FoldIn(factors, reg), sample), [r for r, _ in sample]


def fit_item_content_map(
    emb: np.ndarray,
    factors: np.ndarray,
    counts: np.ndarray,
    users: tuple[np.ndarray, list[np.ndarray]] | None,
) -> tuple[np.ndarray, ContentCalibration | None, dict[str, Any]]:
    """The map and (with user vectors) its calibration, from item embeddings, factors and
    interaction counts; users: (vectors, consumed rows) from `calibration_users`, None: no
    calibration. The one recipe export and tools/new_items.py share."""
    counts = np.asarray(counts, dtype=np.float64)
    # Items with few interactions have noisy factors: leave them out of the fit
    # (weight 0) and trust the rest by log count (held-out cosine 0.38 vs 0.36).
    weights = np.where(counts >= 5, np.log1p(counts), 0.0)
    queries, seen = (None, None) if users is None or not len(users[0]) else users
    w_map, report = fit_content_map(emb, factors, weights=weights, queries=queries, seen=seen)
    cal = report["calibration"]
    return w_map, None if cal is None else ContentCalibration.from_json(cal), report


def export_content(
    ds: Dataset,
    factors: np.ndarray,
    out_dir: Path,
    progress: bool = True,
    *,
    reg: float = CALIBRATION_REG,
    alpha: float = CALIBRATION_ALPHA,
) -> dict[str, Any]:
    """reg, alpha: the version's fold-in parameters, for the calibration's user vectors."""
    info = export_encoder(out_dir, progress=progress)
    encoder = TextEncoder(out_dir, threads=2)
    emb = encoder.encode([item_text(it) for it in ds.items])
    counts = np.bincount(ds.item, minlength=ds.n_items)
    users = calibration_users(ds, factors, reg, alpha)
    w_map, calibration, report = fit_item_content_map(emb, factors, counts, users)
    np.save(out_dir / CONTENT_MAP_FILE, w_map.astype(np.float32))
    if calibration is not None:
        (out_dir / CALIBRATION_FILE).write_text(json.dumps(calibration.to_json()) + "\n")
    LOG.info("content map: %s", {k: v for k, v in report.items() if not isinstance(v, list)})
    # "embeddings" (n, dim): reused by the context step (export/context.py), never saved.
    return {"dim": int(emb.shape[1]), "report": report, "encoder": info, "embeddings": emb}
