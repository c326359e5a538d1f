"""Dynamic batching across concurrent requests (as Triton's dynamic batcher).

A request waits at most `max_delay` (the timer starts with the first request
of a batch) or until `max_batch` requests are waiting; then the whole batch
runs as one call of `run_batch` in the model thread. While a batch runs, new
requests gather for the next one. Requests cancelled by their caller or past
their deadline are dropped before the batch runs and cost nothing. The
queue is bounded: past `max_queue` waiting requests, `submit` fails at once
with QueueFull (the gateway answers RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from worker.metrics import SIZE_BOUNDS, Metrics

LOG = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(Exception):
    """The bounded queue is full."""


class DeadlineExpired(Exception):
    """The request's deadline passed before its batch ran."""


@dataclass
class _Job(Generic[T]):
    item: T
    future: asyncio.Future[Any]
    deadline: float | None  # time.monotonic() seconds
    enqueued: float = field(default_factory=time.monotonic)


class Batcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[T]], Sequence[R]],
        *,
        name: str,
        max_batch: int,  # recgen/config/worker.py has the defaults (--max-batch, ...)
        max_delay: float,  # seconds
        max_queue: int,
        metrics: Metrics | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        assert max_batch >= 1 and max_queue >= max_batch, (max_batch, max_queue)
        self.run_batch = run_batch
        self.name = name
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix=f"batch-{name}")
        self._pending: list[_Job[T]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running = False
        # The batch running now: the event loop keeps only a weak reference to a task,
        # so without this one a running batch could be garbage-collected mid-await.
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def submit(self, item: T, deadline: float | None = None) -> R:
        if len(self._pending) >= self.max_queue:
            self.metrics.inc(f"{self.name}_rejected")
            raise QueueFull(f"{self.name} queue full ({self.max_queue} waiting)")
        loop = asyncio.get_running_loop()
        job = _Job(item, loop.create_future(), deadline)
        self._pending.append(job)
        if len(self._pending) >= self.max_batch:
            self._kick()
        elif self._timer is None and not self._running:
            self._timer = loop.call_later(self.max_delay, self._kick)
        return await job.future  # a cancelled caller cancels this future: dropped at dispatch

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._running or not self._pending:
            return
        self._running = True
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batch-{self.name}")

    def _take(self) -> list[_Job[T]]:
        now = time.monotonic()
        batch: list[_Job[T]] = []
        while self._pending and len(batch) < self.max_batch:
            job = self._pending.pop(0)
            if job.future.done():  # cancelled by the caller
                self.metrics.inc(f"{self.name}_cancelled")
                continue
            if job.deadline is not None and now >= job.deadline:
                self.metrics.inc(f"{self.name}_expired")
                job.future.set_exception(DeadlineExpired("deadline passed while queued"))
                continue
            self.metrics.observe(f"{self.name}_queue_seconds", now - job.enqueued)
            batch.append(job)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = self._take()
                if not batch:
                    break
                self.metrics.observe(f"{self.name}_batch_size", len(batch), SIZE_BOUNDS)
                items = [j.item for j in batch]
                try:
                    results = await loop.run_in_executor(self._executor, self.run_batch, items)
                except Exception as e:  # a bug in the model path: fail this batch only
                    LOG.exception("%s batch of %d failed", self.name, len(batch))
                    for j in batch:
                        if not j.future.done():
                            j.future.set_exception(e)
                    continue
                for j, r in zip(batch, results, strict=True):
                    if not j.future.done():
                        j.future.set_result(r)
                if len(self._pending) < self.max_batch:
                    break
        finally:
            self._running = False
        if self._pending:
            # Requests that arrived during the batch have waited already: their
            # max_delay counts from the oldest one's arrival, not from now.
            wait = self._pending[0].enqueued + self.max_delay - time.monotonic()
            self._timer = loop.call_later(max(0.0, wait), self._kick)
