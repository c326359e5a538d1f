"""Map content-text embeddings into the MF item-factor space (serving side).

A new item has no interactions, so ALS has no factor for it; its text
embedding, pushed through a linear map fitted offline
(`export.content_map.fit_content_map`), gives a stand-in factor that the
scorer and the FAISS index can use like any other. The map is stored as one
float32 matrix ``W`` of shape ``(dim + 1, d)``: the last row is the bias.

numpy only: the worker imports this, and the worker never imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

LOG = logging.getLogger(__name__)


def apply_content_map(W: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """Stand-in item factors ``emb @ W[:-1] + W[-1]``, float32, shape (n, d)."""
    W = np.asarray(W)
    emb = np.asarray(emb)
    if W.ndim != 2 or W.shape[0] < 2:
        raise ValueError(f"content map must be 2-D (dim + 1, d), got shape {W.shape}")
    if emb.ndim == 1:
        emb = emb[None, :]
    if emb.ndim != 2 or emb.shape[1] != W.shape[0] - 1:
        raise ValueError(
            f"embeddings of shape {emb.shape} do not fit a content map of shape {W.shape} "
            f"(expected (n, {W.shape[0] - 1}))"
        )
    out = emb.astype(np.float32, copy=False) @ W[:-1].astype(np.float32, copy=False)
    out += W[-1].astype(np.float32, copy=False)
    return out


def load_content_map(path: Path, *, dim: int | None = None, factors: int | None = None) -> np.ndarray:
    """Read a saved map and check it against the encoder and factor widths."""
    W = np.load(path, allow_pickle=False)
    if W.ndim != 2 or W.dtype != np.float32:
        raise ValueError(f"{path}: expected a 2-D float32 matrix, got {W.dtype} {W.shape}")
    if dim is not None and W.shape[0] != dim + 1:
        raise ValueError(f"{path}: {W.shape[0]} rows, encoder dim {dim} needs {dim + 1}")
    if factors is not None and W.shape[1] != factors:
        raise ValueError(f"{path}: {W.shape[1]} columns, item factors have {factors}")
    if not np.isfinite(W).all():
        raise ValueError(f"{path}: content map holds non-finite values")
    return W
