"""The engine's bookkeeping: a queued request, the running batch's per-row arrays, stats.

`Request` is one submitted prompt with its sampling settings; `RunningBatch`
holds the rows being decoded (their KV cache and one numpy array per row
attribute, aligned on B) and knows how to keep some rows and join two
batches; `Recent` keeps the last latency samples; `GeneratorStats` is the
snapshot `Generator.stats()` returns. Nothing here runs the model or decides
what runs next.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from worker.llm.detok import IncrementalDecoder
from worker.llm.kv_cache import KVCache, concat
from worker.llm.stream import GenerationHandle

RECENT = 4096  # latency samples and step records kept for stats


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

    @property
    def need(self) -> int:  # KV slots this sequence may grow to
        return len(self.prompt) + self.max_new_tokens


@dataclass
class RunningBatch:
    """Running rows: requests, their KV cache and per-row state, aligned on B."""

    reqs: list[Request]
    kv: KVCache
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
    def prefilled(group: list[Request], kv: KVCache, lengths: np.ndarray, now: float) -> RunningBatch:
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

    @staticmethod
    def join(a: RunningBatch | None, b: RunningBatch | None) -> RunningBatch | None:
        if a is None or b is None:
            return a or b
        return RunningBatch(
            reqs=a.reqs + b.reqs,
            kv=concat([a.kv, b.kv]),
            **{n: np.concatenate([getattr(a, n), getattr(b, n)]) for n in _ROW_FIELDS},
        )


_ROW_FIELDS = [f.name for f in fields(RunningBatch) if f.name not in ("reqs", "kv")]


class Recent:
    """The last `capacity` float samples (a ring buffer)."""

    def __init__(self, capacity: int = RECENT) -> None:
        self._buf = np.zeros(capacity, dtype=np.float64)
        self._n = 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()[-len(self._buf) :]
        idx = (self._n + np.arange(len(values))) % len(self._buf)
        self._buf[idx] = values
        self._n += len(values)

    def values(self) -> list[float]:
        if self._n <= len(self._buf):
            return self._buf[: self._n].tolist()
        cut = self._n % len(self._buf)
        return np.concatenate([self._buf[cut:], self._buf[:cut]]).tolist()


@dataclass(frozen=True)
class GeneratorStats:
    decode_steps: int
    decode_rows: int  # Σ over decode steps of the sequences in the step
    max_rows_per_step: int
    prefill_calls: int
    prefill_rows: int
    prefill_tokens: int  # padded prompt tokens fed by prefills
    prefix_tokens_reused: int  # prompt tokens not fed: the cached prefix's KV was reused
    tokens_generated: int
    requests: int
    finished: dict[str, int]
    queue_depth: int
    running: int
    ttft_s: list[float]  # recent times to first token (from submit)
    token_latency_s: list[float]  # recent gaps between a sequence's tokens

    @property
    def mean_seqs_per_step(self) -> float:
        return self.decode_rows / self.decode_steps if self.decode_steps else 0.0
