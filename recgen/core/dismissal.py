"""What a DISMISS does beyond removing the item: its near neighbours sink a little.

A dismissed item never returns to that user (the gateway excludes it). Items
very like it (cosine of MF item factors above SIMILAR_FROM) lose up to
DEMOTION of the spread of that user's candidate scores, growing linearly
with the similarity: a near duplicate of a dismissed film drops a few
places, an unrelated one does not move. Relative to the spread, so the
same rule holds for warm scores (inner products of any scale) and for
cold-start popularity scores. Only the MAX_DISMISSED newest dismissals
count, so a user cannot make requests expensive by dismissing everything.
"""

from __future__ import annotations

import numpy as np

DEMOTION = 0.15  # a near duplicate loses 15 % of the user's candidate score spread
SIMILAR_FROM = 0.5  # cosine below which an item is not "near"
MAX_DISMISSED = 100


def nearness(unit: np.ndarray, rows: np.ndarray, dismissed: np.ndarray) -> np.ndarray:
    """unit item factors (n, d), candidate rows (c,), dismissed rows (m,) -> (c,) nearness 0..1
    of each candidate to its nearest dismissed item (of the MAX_DISMISSED newest)."""
    sim = (unit[rows] @ unit[dismissed[:MAX_DISMISSED]].T).max(axis=1)  # (c,)
    return np.clip((sim - SIMILAR_FROM) / (1.0 - SIMILAR_FROM), 0.0, 1.0)


def demote(scores: np.ndarray, near: np.ndarray, demotion: float = DEMOTION) -> np.ndarray:
    """One pool's scores (c,) and nearness (c,) -> scores minus demotion · the pool's score spread
    · near, in the scores' dtype. The one definition: a single ranker applies it to its pool
    (`demote_neighbours`), the gateway to the union of the shards' pools (recgen/core/shard_merge.py)."""
    spread = float(scores.max() - scores.min())
    return scores - demotion * spread * near


def demote_neighbours(
    scores: np.ndarray, picked: np.ndarray, unit: np.ndarray, dismissed: list[np.ndarray]
) -> np.ndarray:
    """scores (B, C) of candidate rows picked (B, C; -1 = none), unit item factors (n, d),
    dismissed rows per job -> demoted scores (B, C). Jobs without dismissals are unchanged."""
    out = scores.copy()
    for b, rows in enumerate(dismissed):
        if rows.size == 0:
            continue
        valid = picked[b] >= 0
        if valid.sum() < 2:
            continue
        out[b, valid] = demote(scores[b, valid], nearness(unit, picked[b, valid], rows))
    return out
