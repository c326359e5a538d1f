"""ALS fold-in: a user's vector from their interactions, item factors fixed.

For one user with items I and confidences c_i (Hu, Koren & Volinsky 2008):

    x = (YᵀY + Σ_i (c_i − 1) y_i y_iᵀ + λI)⁻¹ Σ_i c_i y_i

YᵀY + λI is the same for every user, so it is computed once per model
version (`FoldIn.gram`). A batch of users is padded to a common history
length H with confidence 0, which drops the padding from both sums, and
solved in one batched `np.linalg.solve`. The trainer (export/mf.py) uses the
same solve for each ALS half-step, so serving computes exactly what training
optimised. This module does not choose weights: the gateway's feedback
semantics do.
"""

from __future__ import annotations

import numpy as np


def gram(factors: np.ndarray, reg: float) -> np.ndarray:
    """YᵀY + λI, (d, d) float64 (float64 keeps the solve well conditioned)."""
    y = factors.astype(np.float64, copy=False)
    return y.T @ y + reg * np.eye(y.shape[1])


def solve_batch(
    factors: np.ndarray,
    gram_reg: np.ndarray,
    idx: np.ndarray,
    conf: np.ndarray,
    dtype: type[np.floating] = np.float64,
) -> np.ndarray:
    """User vectors for a padded batch.

    factors: (n, d) item factors; gram_reg: (d, d) from `gram`;
    idx: (B, H) item rows (any valid row where padded); conf: (B, H) confidence
    c_i ≥ 1 for real entries and 0 for padding. Returns (B, d) float32; a user
    with no entries gets the zero vector. dtype: what the sums and the solve run in.
    float64 is what training and evaluation use; float32 is ~4x faster for a large batch
    and gave every one of the 943 MovieLens training users the same top 50 (docs/perf/README.md),
    so the worker uses it for large batches only (worker/ranking.py).
    """
    assert idx.shape == conf.shape and idx.ndim == 2, (idx.shape, conf.shape)
    y = factors[idx].astype(dtype, copy=False)  # (B, H, d)
    c = conf.astype(dtype, copy=False)
    gram_reg = gram_reg.astype(dtype, copy=False)
    extra = np.where(c > 0, c - 1, 0).astype(dtype, copy=False)  # (B, H)
    # Batched matmuls, not einsum(optimize=True): einsum plans its contraction path on every
    # call (~150 µs, most of a one-user fold-in), and these products give the same bits.
    yt = y.transpose(0, 2, 1)  # (B, d, H)
    a = gram_reg + (yt * extra[:, None, :]) @ y  # (B, d, d)
    b = yt @ c[..., None]  # (B, d, 1)
    return np.linalg.solve(a, b)[..., 0].astype(np.float32)


def pad_histories(
    histories: list[tuple[np.ndarray, np.ndarray]], max_len: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """[(rows, conf), ...] -> (B, H) idx and conf, padding with row 0 / conf 0."""
    h = max((len(r) for r, _ in histories), default=0)
    if max_len is not None:
        h = min(h, max_len)
    h = max(h, 1)
    idx = np.zeros((len(histories), h), dtype=np.int64)
    conf = np.zeros((len(histories), h), dtype=np.float32)
    for b, (rows, c) in enumerate(histories):
        n = min(len(rows), h)
        idx[b, :n] = rows[:n]
        conf[b, :n] = c[:n]
    return idx, conf


class FoldIn:
    """Batched fold-in against one version's item factors."""

    def __init__(self, factors: np.ndarray, reg: float) -> None:
        self.factors = np.ascontiguousarray(factors, dtype=np.float32)  # (n, d)
        self.reg = reg
        self.gram = gram(self.factors, reg)  # (d, d)

    def user_vectors(
        self, histories: list[tuple[np.ndarray, np.ndarray]], dtype: type[np.floating] = np.float64
    ) -> np.ndarray:
        """(B, d) user vectors from [(item rows, confidences), ...]; dtype: `solve_batch`'s."""
        idx, conf = pad_histories(histories)
        return solve_batch(self.factors, self.gram, idx, conf, dtype)
