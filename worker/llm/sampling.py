"""Next-token choice from a step's logits: greedy argmax, or temperature / top-p sampling.

Each sampled row draws from its request's own seeded numpy generator, so a
request's text depends on its seed only, never on what else shares the batch.
This module knows nothing about batches beyond the arrays it is given.
"""

from __future__ import annotations

import numpy as np


def choose(
    logits: np.ndarray, temperature: np.ndarray, top_p: np.ndarray, rngs: list[np.random.Generator]
) -> np.ndarray:
    """(B, V) logits -> (B,) next tokens: argmax, or sampled for rows with temperature > 0.

    rngs: one generator per row (only the sampled rows' are used).
    """
    tokens = logits.argmax(axis=-1).astype(np.int64)
    rows = np.flatnonzero(temperature > 0)
    if rows.size:
        tokens[rows] = sample(logits[rows], temperature[rows], top_p[rows], [rngs[i] for i in rows.tolist()])
    return tokens


def sample(
    logits: np.ndarray, temperature: np.ndarray, top_p: np.ndarray, rngs: list[np.random.Generator]
) -> np.ndarray:
    """(n, V) logits -> (n,) tokens drawn with temperature and nucleus (top-p) filtering."""
    z = logits.astype(np.float64) / temperature[:, None]
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)  # (n, V)
    u = np.array([rng.random() for rng in rngs])  # one draw per row: reproducible per seed
    if np.all(top_p >= 1.0):
        cdf = np.cumsum(p, axis=1)
        return np.minimum((cdf <= u[:, None] * cdf[:, -1:]).sum(axis=1), p.shape[1] - 1)
    order = np.argsort(-p, axis=1, kind="stable")  # (n, V) most likely first
    ps = np.take_along_axis(p, order, axis=1)
    keep = (np.cumsum(ps, axis=1) - ps) < top_p[:, None]  # the most likely always stays
    cdf = np.cumsum(np.where(keep, ps, 0.0), axis=1)
    idx = np.minimum((cdf <= u[:, None] * cdf[:, -1:]).sum(axis=1), p.shape[1] - 1)
    return order[np.arange(len(order)), idx]
