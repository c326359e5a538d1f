"""The running batch: queued requests, the rows being decoded, and their KV cache.

`Request` is one submitted prompt with its sampling settings. `RunningBatch`
holds the rows being decoded: their `KVCache` and one numpy array per row
attribute, aligned on B; it keeps some rows or joins two batches.

The KV cache is left-padded: every row's last real token sits at the right
end of the time axis, padding (mask 0) before its tokens (or, after a prefill
on top of a cached prompt prefix, between the prefix and the rest of the
prompt: the mask says which columns count, never their place). Joining
batches pads the shorter one on the left to a common length; dropping rows
also drops the leading columns that have become padding in every remaining
row. `KVCache` holds plain numpy arrays (what `session.run` takes and
returns); worker/llm/device_kv.py's `DeviceKVCache` holds OrtValues on the
session's device (I/O binding) and behaves the same: `RunningBatch` uses
either through the `Cache` protocol.

Nothing here runs the model, samples, or decides what runs next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol, Self

import numpy as np

from worker.llm.api import GenerationHandle
from worker.llm.constraint import TitleConstraint
from worker.llm.decoding import IncrementalDecoder


@dataclass(eq=False)
class Request:
    handle: GenerationHandle
    prompt: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    rng: np.random.Generator
    deadline: float  # monotonic; inf when none
    detok: IncrementalDecoder
    constraint: TitleConstraint | None = None  # grounded by construction (worker/llm/constraint.py)

    @property
    def need(self) -> int:  # KV slots this sequence may grow to
        return len(self.prompt) + self.max_new_tokens


class Cache(Protocol):
    """What the running batch needs of a KV cache, on the host or on a device."""

    mask: np.ndarray  # (B, T) int64, on the host

    @property
    def batch(self) -> int: ...

    @property
    def length(self) -> int: ...

    def nbytes(self) -> int: ...

    def step_mask(self, new_tokens: int = 1) -> np.ndarray: ...

    def select(self, rows: np.ndarray) -> Self: ...

    def join(self, other: Self) -> Self: ...


@dataclass
class RunningBatch:
    """Running rows: requests, their KV cache and per-row state, aligned on B."""

    reqs: list[Request]
    kv: Cache
    next_tokens: np.ndarray  # (B,) int64 sampled, not yet fed
    positions: np.ndarray  # (B,) int64 position id of next_tokens
    generated: np.ndarray  # (B,) int64 tokens sampled so far (eos included)
    max_new: np.ndarray  # (B,) int64
    need: np.ndarray  # (B,) int64 prompt + max_new
    deadlines: np.ndarray  # (B,) float64 monotonic
    ids: np.ndarray  # (B,) int64 request ids
    temperature: np.ndarray  # (B,) float64; 0 = greedy
    top_p: np.ndarray  # (B,) float64
    submitted_at: np.ndarray  # (B,) float64
    last_at: np.ndarray  # (B,) float64 time of the last token
    steps: np.ndarray  # (B,) int64 decode steps taken

    @staticmethod
    def prefilled(group: list[Request], kv: Cache, lengths: np.ndarray, now: float) -> RunningBatch:
        """Rows for `group` right after its prefill (KV of the prompts, nothing sampled yet)."""
        n = len(group)
        return RunningBatch(
            reqs=group,
            kv=kv,
            next_tokens=np.zeros(n, dtype=np.int64),
            positions=lengths.astype(np.int64),
            generated=np.zeros(n, dtype=np.int64),
            max_new=np.array([r.max_new_tokens for r in group], dtype=np.int64),
            need=np.array([r.need for r in group], dtype=np.int64),
            deadlines=np.array([r.deadline for r in group], dtype=np.float64),
            ids=np.array([r.handle.request_id for r in group], dtype=np.int64),
            temperature=np.array([r.temperature for r in group], dtype=np.float64),
            top_p=np.array([r.top_p for r in group], dtype=np.float64),
            submitted_at=np.array([r.handle.submitted_at for r in group], dtype=np.float64),
            last_at=np.full(n, now),
            steps=np.zeros(n, dtype=np.int64),
        )

    @property
    def size(self) -> int:
        return len(self.reqs)

    def select(self, rows: np.ndarray) -> RunningBatch:
        return RunningBatch(
            reqs=[self.reqs[i] for i in rows.tolist()],
            kv=self.kv.select(rows),
            **{n: getattr(self, n)[rows] for n in _ROW_FIELDS},
        )

    def without(self, gone: np.ndarray) -> RunningBatch | None:
        """The rows not marked in `gone` ((B,) bool); None when no row is left."""
        if not gone.any():
            return self
        keep = np.flatnonzero(~gone)
        return self.select(keep) if keep.size else None

    @staticmethod
    def join(a: RunningBatch | None, b: RunningBatch | None) -> RunningBatch | None:
        if a is None or b is None:
            return a or b
        return RunningBatch(
            reqs=a.reqs + b.reqs,
            kv=a.kv.join(b.kv),
            **{n: np.concatenate([getattr(a, n), getattr(b, n)]) for n in _ROW_FIELDS},
        )


_ROW_FIELDS = [f.name for f in fields(RunningBatch) if f.name not in ("reqs", "kv")]


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

    def join(self, other: KVCache) -> KVCache:
        return concat([self, other])


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
