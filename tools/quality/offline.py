"""Diagnostic: a recgen version scored offline, as the export evaluates it (tools/quality).

Not served and not a goal: the gap to the served row is what serving-time
history handling does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tools.quality.data import Data
from tools.quality.peers import interaction_matrix, score_top
from tools.quality.splits import Split


def offline_top(data: Data, split: Split, version: Path, mf: dict[str, Any], users: np.ndarray) -> np.ndarray:
    """Diagnostic: the version's item factors, fold-in of each user's train rows (weight 1 each,
    no decay, no cap: the export's own held-out evaluation), train items excluded."""
    from recgen.core.foldin import FoldIn

    catalog_ids = [
        json.loads(line)["item_id"] for line in (version / "catalog.jsonl").read_text().splitlines()
    ]
    ours = {iid: r for r, iid in enumerate(catalog_ids)}
    to_version = np.asarray([ours.get(it.item_id, -1) for it in data.items], dtype=np.int64)
    assert (to_version >= 0).all(), "the version's catalog misses items of the data"
    factors = np.load(version / "item_factors.npy")[to_version]  # rows in the data's item order
    fold = FoldIn(factors, float(mf["reg"]))
    x = interaction_matrix(data.user, data.item, split.train_rows, data.n_users, data.n_items)
    alpha = float(mf["alpha"])

    def score(u: np.ndarray) -> np.ndarray:
        hist = []
        for uu in u.tolist():
            cols = x.indices[x.indptr[uu] : x.indptr[uu + 1]].astype(np.int64)
            hist.append((cols, np.full(cols.size, 1.0 + alpha, np.float32)))
        return fold.user_vectors(hist) @ fold.factors.T

    return score_top(x, users, score, chunk=256)
