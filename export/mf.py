"""Implicit-feedback matrix factorization (iALS) in numpy.

Every interaction is a positive with confidence c = 1 + α·w (w = 1 here:
every rating counts as a positive, as in the evaluation protocol);
unobserved pairs are negatives with confidence 1. Each half-step solves the
same regularized least squares the worker uses for fold-in
(worker/foldin.py), in batches of rows with similar lengths so padding stays
small. Deterministic for a seed. This module does not evaluate or export.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from worker.foldin import gram, pad_histories, solve_batch

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ALSParams:
    factors: int = 64
    reg: float = 0.05  # λ: L2 on both sides
    alpha: float = 2.0  # confidence slope: c = 1 + α·w
    iterations: int = 15
    seed: int = 0

    def to_json(self) -> dict[str, float | int]:
        return dict(self.__dict__)


@dataclass
class ALSModel:
    user_factors: np.ndarray  # (n_users, d) float32
    item_factors: np.ndarray  # (n_items, d) float32
    params: ALSParams


def _rows_by_owner(
    owner: np.ndarray, other: np.ndarray, conf: np.ndarray, n_owner: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=n_owner)
    splits = np.cumsum(counts)[:-1]
    return list(zip(np.split(other[order], splits), np.split(conf[order], splits), strict=True))


def _half_step(
    fixed: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]], reg: float, chunk: int = 256
) -> np.ndarray:
    g = gram(fixed, reg)
    out = np.zeros((len(groups), fixed.shape[1]), dtype=np.float32)
    lengths = np.array([len(r) for r, _ in groups])
    order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
    for start in range(0, len(order), chunk):
        sel = order[start : start + chunk]
        sel = sel[lengths[sel] > 0]
        if sel.size == 0:
            continue
        idx, conf = pad_histories([groups[i] for i in sel])
        out[sel] = solve_batch(fixed, g, idx, conf)
    return out


def train_als(
    user: np.ndarray,
    item: np.ndarray,
    n_users: int,
    n_items: int,
    params: ALSParams,
    weight: np.ndarray | None = None,
    progress: bool = False,
) -> ALSModel:
    """Fit iALS on (user, item) pairs; repeated pairs add up their weight."""
    w = np.ones(len(user), dtype=np.float32) if weight is None else weight.astype(np.float32)
    # Merge repeated (user, item) pairs: one confidence per cell.
    key = user.astype(np.int64) * n_items + item
    uniq, inv = np.unique(key, return_inverse=True)
    w_cell = np.bincount(inv, weights=w).astype(np.float32)
    u_cell = (uniq // n_items).astype(np.int64)
    i_cell = (uniq % n_items).astype(np.int64)
    conf = 1.0 + params.alpha * w_cell

    rng = np.random.default_rng(params.seed)
    scale = 1.0 / np.sqrt(params.factors)
    x = (rng.standard_normal((n_users, params.factors)) * scale).astype(np.float32)
    y = (rng.standard_normal((n_items, params.factors)) * scale).astype(np.float32)
    by_user = _rows_by_owner(u_cell, i_cell, conf, n_users)
    by_item = _rows_by_owner(i_cell, u_cell, conf, n_items)
    iterator = range(params.iterations)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="ALS", unit="it")
    for _ in iterator:
        x = _half_step(y, by_user, params.reg)
        y = _half_step(x, by_item, params.reg)
    return ALSModel(user_factors=x, item_factors=y, params=params)
