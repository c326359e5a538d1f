"""EASE (Steck 2019) as a held-out baseline, only where it fits.

    B = I − P / diag(P),  P = (XᵀX + λI)⁻¹,  scores = X_u B

X is the users × items 0/1 training matrix, kept sparse (CSR). Its Gram
matrix is built from sparse products over column blocks, never a dense
`x.T @ x` (numpy's OpenBLAS segfaults on that from about 16,000 columns with
several threads, and needs users × items dense memory). P is inverted in
place with a Cholesky factorization (XᵀX + λI is symmetric positive
definite), so the one dense object is the items × items float64 matrix.
All of it runs with BLAS capped at one thread (threadpoolctl).

Before starting, `plan_ease` estimates memory and time from the data's
shape; where either is over its limit the evaluation raises BudgetError at
once with the reason (the export then records EASE as skipped). This module
does not choose λ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from export import budget
from export.data import Dataset
from export.evaluate import Split, TrainMatrix, chunk_users, evaluate_scorer, train_matrix

LOG = logging.getLogger(__name__)

LAMBDA = 100.0
MAX_SECONDS = 900.0  # default time limit for the whole baseline
BLOCK_BYTES = 256 << 20  # sparse Gram column block / symmetrizing block, at most
# Sustained rates on one core, measured on a 2-core x86-64 (AVX2) box; conservative.
PAIRS_PER_S = 2e7  # co-occurring (item, item) pairs a sparse product emits per second
SPMM_PER_S = 5e8  # multiply-adds per second of sparse rows x dense B when scoring


@dataclass
class EasePlan:
    n_items: int
    pairs: int  # Σ_u n_u²: the sparse Gram's work
    score_madds: int  # Σ over test users of n_u · n_items
    bytes: int
    seconds: float
    reason: str | None  # None: it fits

    def to_json(self) -> dict[str, Any]:
        return {
            "items": self.n_items,
            "estimated_bytes": self.bytes,
            "estimated_seconds": round(self.seconds, 1),
        }


def design_matrix(seen: TrainMatrix, n_items: int) -> sp.csr_matrix:
    """X: users × items, 1.0 where the user has the item in training (float64 CSR)."""
    n_users = len(seen.indptr) - 1
    data = np.ones(len(seen.items), dtype=np.float64)
    return sp.csr_matrix((data, seen.items, seen.indptr), shape=(n_users, n_items))


def blas_flops_per_s() -> float:
    """Single-thread dense LAPACK rate, from a small Cholesky inverse (about 0.2 s)."""
    n = 1536
    r = np.random.default_rng(0).random((n, n))
    a = np.asfortranarray(r + r.T + 2 * n * np.eye(n))  # diagonally dominant: positive definite
    with threadpool_limits(limits=1, user_api="blas"):
        t = time.perf_counter()
        c, _ = lapack.dpotrf(a, lower=0, overwrite_a=1)
        lapack.dpotri(c, lower=0, overwrite_c=1)
        return n**3 / max(time.perf_counter() - t, 1e-6)


def plan_ease(
    x: sp.csr_matrix,
    test_user: np.ndarray,
    max_memory: int | None,
    max_seconds: float = MAX_SECONDS,
    flops_per_s: float | None = None,
) -> EasePlan:
    n = x.shape[1]
    deg = np.diff(x.indptr).astype(np.float64)
    pairs = int((deg**2).sum())
    score_madds = int(deg[test_user].sum() * n)
    dense = 8 * n * n  # XᵀX + λI, inverted and turned into B in place
    scratch = 2 * BLOCK_BYTES + x.data.nbytes * 3 + x.indices.nbytes * 3
    chunk = 2 * n * (3 * 8)  # two users' float64 score rows at least (evaluate.chunk_users)
    need = dense + scratch + chunk
    rate = blas_flops_per_s() if flops_per_s is None else flops_per_s
    seconds = pairs / PAIRS_PER_S + n**3 / rate + score_madds / SPMM_PER_S
    room = budget.headroom(max_memory)
    reason = None
    if need > room:
        reason = (
            f"EASE on {n:,} items needs about {budget.fmt_bytes(need)} ({n:,}² float64) but the memory "
            f"budget leaves {budget.fmt_bytes(room)}: raise --max-memory to run it"
        )
    elif seconds > max_seconds:
        reason = (
            f"EASE on {n:,} items would take about {seconds:.0f} s (Cholesky inverse of {n:,}², "
            f"{pairs:,} co-occurrences), over its {max_seconds:.0f} s limit"
        )
    return EasePlan(n, pairs, score_madds, need, seconds, reason)


def cooccurrence_blocks(
    x: sp.csr_matrix, block_bytes: int = BLOCK_BYTES
) -> Iterator[tuple[int, sp.coo_matrix]]:
    """(j0, Xᵀ X[:, j0:j0 + w]) for column blocks: sparse × sparse products, BLAS capped at 1 thread.

    Work is the co-occurring pairs Σ_u n_u², memory one (items × w) sparse block at a time;
    X is never densified.
    """
    n = x.shape[1]
    xt = x.T.tocsr()  # items × users
    xc = x.tocsc()
    width = max(1, min(n, block_bytes // (16 * n)))  # a coo block holds ≤ n × width entries
    for j0 in range(0, n, width):
        with threadpool_limits(limits=1, user_api="blas"):
            blk = (xt @ xc[:, j0 : j0 + width]).tocoo()
        yield j0, blk


def gram(x: sp.csr_matrix, lam: float, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """XᵀX + λI, (n, n) float64, written block by block from `cooccurrence_blocks`."""
    n = x.shape[1]
    g = np.zeros((n, n), dtype=np.float64)
    for j0, blk in cooccurrence_blocks(x, block_bytes):
        g[blk.row, j0 + blk.col] = blk.data
    idx = np.arange(n)
    g[idx, idx] += lam
    return g


def weights_in_place(g: np.ndarray, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """Turn g = XᵀX + λI (C-order, symmetric) into EASE's B in place; returns g."""
    n = g.shape[0]
    f = g.T  # the same memory, Fortran-ordered: LAPACK works on it without a copy
    with threadpool_limits(limits=1, user_api="blas"):
        c, info = lapack.dpotrf(f, lower=0, overwrite_a=1, clean=0)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: Cholesky failed (info {info})")
        p, info = lapack.dpotri(c, lower=0, overwrite_c=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: inverse failed (info {info})")
    assert np.shares_memory(p, g), "LAPACK copied the matrix"
    # p (Fortran) holds P in its upper triangle = g's lower triangle (C order); mirror it.
    rows = max(1, min(n, block_bytes // (8 * n)))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        blk = g[r0:r1, r0:r1]
        iu = np.triu_indices(r1 - r0, 1)
        blk[iu] = blk.T[iu]
        g[r0:r1, r1:] = g[r1:, r0:r1].T
    diag = np.diag(g).copy()
    for r0 in range(0, n, rows):
        g[r0 : r0 + rows] /= -diag[None, :]  # B = −P / diag(P), column j divided by P_jj
    g[np.arange(n), np.arange(n)] = 0.0
    return g


def evaluate_ease(
    ds: Dataset,
    split: Split,
    lam: float = LAMBDA,
    *,
    max_memory: int | None = None,
    max_seconds: float = MAX_SECONDS,
    progress: bool = False,
) -> dict[str, Any]:
    """EASE's held-out metrics; BudgetError (before any heavy work) where it does not fit."""
    seen = train_matrix(ds, split.train_rows)
    x = design_matrix(seen, ds.n_items)
    plan = plan_ease(x, split.test_user, max_memory, max_seconds)
    if plan.reason:
        raise budget.BudgetError(plan.reason)
    LOG.info("EASE: %d items, about %s and %.0f s", plan.n_items, budget.fmt_bytes(plan.bytes), plan.seconds)
    t = time.perf_counter()
    g = gram(x, lam)
    LOG.info("EASE: sparse Gram in %.1f s", time.perf_counter() - t)
    t = time.perf_counter()
    b = weights_in_place(g)
    LOG.info("EASE: B by Cholesky inverse in %.1f s", time.perf_counter() - t)
    chunk_users(ds.n_items, 8, max_memory, "EASE scoring")  # fails here, not mid-way, if no room

    def score(users: np.ndarray) -> np.ndarray:
        with threadpool_limits(limits=1, user_api="blas"):
            return np.asarray(x[users] @ b)

    out = evaluate_scorer(
        ds, split, score, seen=seen, score_bytes=8, max_memory=max_memory, progress=progress, name="EASE"
    )
    out["estimate"] = plan.to_json()
    return out
