"""Implicit-feedback matrix factorization (iALS) in numpy.

Every interaction is a positive with confidence c = 1 + α·w (w = 1 here:
every rating counts as a positive, as in the evaluation protocol);
unobserved pairs are negatives with confidence 1. Each half-step solves, row
by row and exactly (no conjugate-gradient approximation), the same
regularized least squares the worker uses for fold-in (recgen/core/foldin.py):

    x_u = (YᵀY + λI + Σ_i (c_ui − 1) y_i y_iᵀ)⁻¹ Σ_i c_ui y_i

so the item factors trained here are the ones the served fold-in expects.

Rows are solved in batches padded to a common length, and padding is
bounded: rows are grouped by length class (lengths in (2^(k−1), 2^k], so a
row is padded to less than twice its length), and a batch holds at most
BATCH_BYTES of float64 work, so a popular item with 50,000 users is solved
alone instead of padding 255 other rows to its length. Batches run on one
thread per core with BLAS single-threaded; every row's result is independent
of its batch and of scheduling, so training is deterministic for a seed.
This module does not evaluate or export.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from export import budget
from recgen.core.foldin import gram

LOG = logging.getLogger(__name__)

MAX_BATCH_ROWS = 4096  # rows per solve batch, whatever their length
BATCH_BYTES = 64 << 20  # float64 work arrays of one batch, at most (less if the budget is tight)
MIN_BATCH_BYTES = 16 << 20


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


@dataclass
class Rows:
    """One side of the interaction matrix as CSR: row r's entries are indptr[r]:indptr[r + 1]."""

    indptr: np.ndarray  # (n_rows + 1,) int64
    other: np.ndarray  # (nnz,) int64 column (the other side's row)
    conf: np.ndarray  # (nnz,) float64 confidence c ≥ 1
    batches: list[np.ndarray]  # row indices solved together, in solve order

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1


def _rows_by_owner(
    owner: np.ndarray, other: np.ndarray, conf: np.ndarray, n_owner: int, d: int, batch_bytes: int
) -> Rows:
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=n_owner)
    indptr = np.zeros(n_owner + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return Rows(indptr, other[order], conf[order].astype(np.float64), plan_batches(counts, d, batch_bytes))


def batch_row_bytes(length: int, d: int) -> int:
    """float64 work of one row padded to `length`: gathered and weighted factors, its (d, d) system."""
    return 8 * (2 * length * d + 3 * d * d + 3 * length)


def plan_batches(lengths: np.ndarray, d: int, batch_bytes: int) -> list[np.ndarray]:
    """Rows (length > 0) grouped by power-of-two length class, each batch within batch_bytes."""
    rows = np.flatnonzero(lengths > 0)
    rows = rows[np.argsort(lengths[rows], kind="stable")]
    cls = np.ceil(np.log2(lengths[rows])).astype(np.int64)
    bounds = np.flatnonzero(np.diff(cls)) + 1
    out: list[np.ndarray] = []
    for group in np.split(rows, bounds):
        if group.size == 0:
            continue
        longest = int(lengths[group[-1]])
        per = max(1, min(MAX_BATCH_ROWS, batch_bytes // batch_row_bytes(longest, d)))
        out.extend(group[s : s + per] for s in range(0, group.size, per))
    return out


def solve_rows(fixed: np.ndarray, g: np.ndarray, rows: Rows, sel: np.ndarray) -> np.ndarray:
    """Exact least-squares solutions for rows `sel` (all non-empty), (len(sel), d) float64.

    fixed: (n, d) float64 factors of the other side; g: YᵀY + λI from `recgen.core.foldin.gram`.
    """
    start = rows.indptr[sel]
    length = rows.indptr[sel + 1] - start
    h = int(length.max())
    pos = np.arange(h)
    real = pos[None, :] < length[:, None]  # (B, H)
    flat = np.where(real, start[:, None] + pos[None, :], 0)
    idx = np.where(real, rows.other[flat], 0)  # padding points at row 0 ...
    c = np.where(real, rows.conf[flat], 0.0)  # ... with confidence 0: it drops out of both sums
    y = fixed[idx]  # (B, H, d)
    a = np.matmul((y * np.where(real, c - 1.0, 0.0)[..., None]).transpose(0, 2, 1), y)  # (B, d, d)
    a += g
    b = np.matmul(c[:, None, :], y)  # (B, 1, d)
    return np.linalg.solve(a, b.transpose(0, 2, 1))[..., 0]


def _half_step(fixed: np.ndarray, rows: Rows, reg: float, threads: int) -> np.ndarray:
    """New factors for every row of `rows`; batches run on `threads` threads, BLAS single-threaded.

    Each batch's result depends only on its rows, so the outcome does not depend on scheduling.
    """
    g = gram(fixed, reg)
    f64 = fixed.astype(np.float64)
    out = np.zeros((rows.n_rows, fixed.shape[1]), dtype=np.float32)  # empty rows: the zero vector

    def solve(sel: np.ndarray) -> None:
        out[sel] = solve_rows(f64, g, rows, sel)

    # numpy releases the GIL in gather, matmul and solve; one BLAS thread per batch avoids
    # OpenBLAS's thread hand-off on these small (d x H x d) products.
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(solve, rows.batches):
            pass
    return out


def training_bytes(n_cells: int, n_users: int, n_items: int, d: int, batch_bytes: int) -> int:
    """Peak memory of `train_als` beyond its inputs, roughly."""
    cells = n_cells * (8 * 4 + 4 * 2)  # keys, sorted copies, both CSR layouts, confidences
    factors = (n_users + n_items) * d * (4 * 2 + 8)  # float32 both sides, float64 copy of the fixed side
    return cells + factors + batch_bytes


def train_als(
    user: np.ndarray,
    item: np.ndarray,
    n_users: int,
    n_items: int,
    params: ALSParams,
    weight: np.ndarray | None = None,
    progress: bool = False,
    max_memory: int | None = None,
) -> ALSModel:
    """Fit iALS on (user, item) pairs; repeated pairs add up their weight.

    max_memory: the export's budget in bytes (None: the default share of RAM); batches
    shrink to fit it, and training fails at once (BudgetError) if even the smallest does not.
    """
    d = params.factors
    threads = max(1, len(os.sched_getaffinity(0)))
    longest = int(max(np.bincount(user).max(initial=0), np.bincount(item).max(initial=0)))
    room = budget.require(
        training_bytes(len(user), n_users, n_items, d, threads * batch_row_bytes(longest, d)),
        max_memory,
        f"ALS training ({n_users:,} users x {n_items:,} items, {len(user):,} interactions, {d} factors)",
        "lower --factors",
    )
    batch_bytes = int(min(BATCH_BYTES, max(MIN_BATCH_BYTES, room // (8 * threads))))
    w = np.ones(len(user), dtype=np.float32) if weight is None else weight.astype(np.float32)
    # Merge repeated (user, item) pairs: one confidence per cell.
    key = user.astype(np.int64) * n_items + item
    uniq, inv = np.unique(key, return_inverse=True)
    w_cell = np.bincount(inv, weights=w).astype(np.float32)
    del key, inv
    u_cell = (uniq // n_items).astype(np.int64)
    i_cell = (uniq % n_items).astype(np.int64)
    conf = 1.0 + params.alpha * w_cell

    rng = np.random.default_rng(params.seed)
    scale = 1.0 / np.sqrt(d)
    x = (rng.standard_normal((n_users, d)) * scale).astype(np.float32)
    y = (rng.standard_normal((n_items, d)) * scale).astype(np.float32)
    by_user = _rows_by_owner(u_cell, i_cell, conf, n_users, d, batch_bytes)
    by_item = _rows_by_owner(i_cell, u_cell, conf, n_items, d, batch_bytes)
    del uniq, u_cell, i_cell, conf, w_cell
    iterator = range(params.iterations)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(
            iterator, desc=f"ALS d={d} λ={params.reg:g} α={params.alpha:g}", unit="it", disable=None
        )
    for _ in iterator:
        x = _half_step(y, by_user, params.reg, threads)
        y = _half_step(x, by_item, params.reg, threads)
    return ALSModel(user_factors=x, item_factors=y, params=params)
