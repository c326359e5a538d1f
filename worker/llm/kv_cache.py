"""The running batch's KV cache: left-padded past keys/values plus their mask.

Rows are sequences; every row's last real token sits at the right end of the
time axis, padding (mask 0) before its tokens (or, after a prefill on top of
a cached prompt prefix, between the prefix and the rest of the prompt: the
mask says which columns count, never their place). Joining batches pads the
shorter one on the left to a common length; dropping rows also drops the
leading columns that have become padding in every remaining row.

Arrays are plain numpy (what ONNX Runtime's CPU provider takes without a
copy). This module knows nothing about tokens, sampling or scheduling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class KVCache:
    """past[i]: (B, kv_heads, T, head_dim), one per past input of the graph, in
    input order (layer 0 key, layer 0 value, ...). mask: (B, T) int64."""

    past: list[np.ndarray]
    mask: np.ndarray

    @staticmethod
    def empty(
        n_arrays: int, batch: int, kv_heads: int, head_dim: int, dtype: np.dtype | type = np.float32
    ) -> KVCache:
        """Past length 0: what a prefill feeds."""
        shape = (batch, kv_heads, 0, head_dim)
        return KVCache(
            [np.zeros(shape, dtype=dtype) for _ in range(n_arrays)], np.zeros((batch, 0), dtype=np.int64)
        )

    @property
    def batch(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.past)

    def step_mask(self, new_tokens: int = 1) -> np.ndarray:
        """(B, T + new) mask for a forward pass feeding `new_tokens` real tokens per row."""
        return np.concatenate([self.mask, np.ones((self.batch, new_tokens), dtype=np.int64)], axis=1)

    def select(self, rows: np.ndarray) -> KVCache:
        """Keep `rows` (indices, in order), then trim the common left padding."""
        mask = self.mask[rows]
        real = mask.any(axis=0)  # (T,) columns some row still uses
        first = int(real.argmax()) if real.any() else self.length
        # One copy: take rows of the trimmed view; the result is C-contiguous.
        past = [np.take(p[:, :, first:], rows, axis=0) for p in self.past]
        return KVCache(past, np.ascontiguousarray(mask[:, first:]))


def concat(caches: Sequence[KVCache]) -> KVCache:
    """Stack batches along B, left-padding each to the longest (mask 0, zero keys/values)."""
    caches = [c for c in caches if c.batch > 0]
    assert caches, "nothing to concatenate"
    if len(caches) == 1:
        return caches[0]
    t = max(c.length for c in caches)
    b = sum(c.batch for c in caches)
    first = caches[0]
    past = []
    for i, p0 in enumerate(first.past):
        out = np.zeros((b, p0.shape[1], t, p0.shape[3]), dtype=p0.dtype)  # (B, H, T, hd)
        row = 0
        for c in caches:
            out[row : row + c.batch, :, t - c.length :] = c.past[i]
            row += c.batch
        past.append(out)
    mask = np.zeros((b, t), dtype=np.int64)
    row = 0
    for c in caches:
        mask[row : row + c.batch, t - c.length :] = c.mask
        row += c.batch
    return KVCache(past, mask)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, L) input ids and mask for prompts of different lengths, padded on the left."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, p in enumerate(prompts):
        if len(p):
            ids[row, width - len(p) :] = p
            mask[row, width - len(p) :] = 1
    return ids, mask


def position_ids(mask: np.ndarray) -> np.ndarray:
    """cumsum(mask) - 1 with padded slots set to 1, as transformers' generate does."""
    pos = np.cumsum(mask, axis=1) - 1
    pos[mask == 0] = 1
    return pos.astype(np.int64)
