"""The engine's counters: what the scheduler did, for `Generator.stats()` and `recent_steps()`.

Prefill calls, decode steps and tokens, and the recent times to first token
and between tokens (ring buffers, so memory stays fixed however long a
worker runs). How requests ended is counted by the Outbox.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from worker.llm.api import GeneratorStats
from worker.llm.batch import RunningBatch

RECENT = 4096  # latency samples and step records kept for stats


class StatsRecorder:
    """The counters behind `stats()` and `recent_steps()`; how requests ended is the Outbox's.

    The scheduler thread writes it (submitters count their request under the
    generator's lock); `stats()` reads it without stopping the scheduler.
    """

    def __init__(self) -> None:
        self._n = dict(
            decode_steps=0,
            decode_rows=0,
            max_rows_per_step=0,
            prefill_calls=0,
            prefill_rows=0,
            prefill_tokens=0,
            prefix_tokens_reused=0,
            tokens_generated=0,
            requests=0,
        )
        self._ttft = Recent()
        self._token_latency = Recent()
        self._steps: deque[tuple[int, ...]] = deque(maxlen=RECENT)

    def submitted(self) -> None:
        self._n["requests"] += 1

    def prefilled(self, rows: int, padded: int, reused: int) -> None:
        """One prefill call of `rows` prompts: `padded` tokens fed, `reused` from the cached prefix."""
        self._n["prefill_calls"] += 1
        self._n["prefill_rows"] += rows
        self._n["prefill_tokens"] += padded
        self._n["prefix_tokens_reused"] += reused

    def decoded(self, b: RunningBatch) -> None:
        """One decode step over every row of `b`."""
        self._n["decode_steps"] += 1
        self._n["decode_rows"] += b.size
        self._n["max_rows_per_step"] = max(self._n["max_rows_per_step"], b.size)
        self._steps.append(tuple(b.ids.tolist()))

    def sampled(
        self, b: RunningBatch, eos: np.ndarray, first: np.ndarray, gaps: np.ndarray, now: float
    ) -> None:
        """One token per row of `b`; eos, first, gaps: (B,) as `Generator._accept` computes them."""
        self._n["tokens_generated"] += int(b.size - eos.sum())
        if first.any():
            self._ttft.add(now - b.submitted_at[first])
        if not first.all():
            self._token_latency.add(gaps[~first])

    def snapshot(self, *, finished: dict[str, int], queue_depth: int, running: int) -> GeneratorStats:
        return GeneratorStats(
            **self._n,
            finished=finished,
            queue_depth=queue_depth,
            running=running,
            ttft_s=self._ttft.values(),
            token_latency_s=self._token_latency.values(),
        )

    def recent_steps(self) -> list[tuple[int, ...]]:
        return list(self._steps)


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
