"""The fold-in's batched matmuls (recgen/core/foldin.py) against the einsum formulation they
replaced, bit for bit; and its float32 path against float64 on every training user of a real
version: the same top 50 (the worker folds large batches in float32, worker/ranking.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recgen.core.foldin import FoldIn, gram, pad_histories, solve_batch
from recgen.core.user_history import USERS_DIR, UserHistories
from recgen.repository import ModelRepository


def einsum_solve(factors: np.ndarray, gram_reg: np.ndarray, idx: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """The formulation before the matmuls (the trainer's since the first version)."""
    y = factors[idx].astype(np.float64)
    c = conf.astype(np.float64)
    extra = np.where(c > 0, c - 1.0, 0.0)
    a = gram_reg[None] + np.einsum("bhd,bh,bhe->bde", y, extra, y, optimize=True)
    b = np.einsum("bhd,bh->bd", y, c, optimize=True)
    return np.linalg.solve(a, b[..., None])[..., 0].astype(np.float32)


def test_matmuls_equal_the_einsum_fold_in_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(500, 16)).astype(np.float32)
    g = gram(factors, 0.1)
    for b, h in ((1, 1), (1, 200), (7, 30), (64, 120)):
        idx = rng.integers(0, 500, size=(b, h))
        conf = (1 + 40 * rng.random((b, h))).astype(np.float32)
        conf[:, h // 2 :] *= rng.random((b, h - h // 2)) < 0.5  # padding (confidence 0) mixed in
        assert np.array_equal(solve_batch(factors, g, idx, conf), einsum_solve(factors, g, idx, conf))


def test_float32_fold_in_gives_every_training_user_the_same_top_50(model_root: Path) -> None:
    mv = ModelRepository(model_root).open()
    factors = np.load(mv.file("item_factors.npy"))
    mf = mv.manifest.params["mf"]
    fold = FoldIn(factors, float(mf["reg"]))
    users = UserHistories(mv.path / USERS_DIR)
    n = len(users)
    hist = [users.arrays.fold_in(u, float(mf["alpha"])) for u in range(n)]
    differ = 0
    for s in range(0, n, 64):
        idx, conf = pad_histories(hist[s : s + 64])
        u64 = solve_batch(fold.factors, fold.gram, idx, conf)
        u32 = solve_batch(fold.factors, fold.gram, idx, conf, np.float32)
        assert np.abs(u64 - u32).max() <= 1e-5 * np.abs(u64).max()
        s64, s32 = u64 @ fold.factors.T, u32 @ fold.factors.T
        top64 = np.argsort(-s64, axis=1, kind="stable")[:, :50]
        top32 = np.argsort(-s32, axis=1, kind="stable")[:, :50]
        differ += int((top64 != top32).any(axis=1).sum())
    assert n > 900 and differ == 0
