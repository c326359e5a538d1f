"""Watching a gateway under a fault: its Prometheus gauges and the memory of its process tree.

Reads only: what a scenario does to the gateway is the scenario's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tools.harness.procs import Gateway


def worker_event(m: dict[str, float], name: str) -> float:
    return m.get(f'recgen_worker_events_total{{name="{name}"}}', 0.0)


def deltas(m0: dict[str, float], m1: dict[str, float], names: Sequence[str]) -> dict[str, float]:
    return {n: worker_event(m1, n) - worker_event(m0, n) for n in names}


async def quiet(serve: Gateway, limit_s: float = 10.0) -> dict[str, float]:
    """Metrics once nothing is in flight in the gateway or queued in a worker."""
    t_end = time.monotonic() + limit_s
    m = serve.metrics()
    while time.monotonic() < t_end:
        if m["recgen_in_flight_requests"] == 0 and m["recgen_worker_queue_depth"] == 0:
            break
        await asyncio.sleep(0.2)
        m = serve.metrics()
    await asyncio.sleep(0.5)  # cancellations reach the workers
    return serve.metrics()


class Watch:
    """Samples the gateway's metrics every `every` seconds: (time, healthy workers, restarts,
    in flight), and the RSS of its process tree.

    A scrape asks every worker in rotation for its Stats (1 s timeout), so while a hung
    worker is still in rotation one scrape takes a second: scrapes overlap (a small
    thread pool) to keep the time resolution at `every`. The gauges are read as the
    scrape begins, so each sample is stamped with its start time.
    """

    def __init__(self, serve: Gateway, every: float = 0.1) -> None:
        self.serve, self.every = serve, every
        self.samples: list[tuple[float, float, float, float]] = []
        self.rss: list[tuple[float, float]] = []  # (time, MiB of the gateway + workers)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(16, thread_name_prefix="watch")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, t: float) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            m = self.serve.metrics()
            self.samples.append(
                (
                    t,
                    m["recgen_workers_healthy"],
                    m["recgen_worker_restarts_total"],
                    m["recgen_in_flight_requests"],
                )
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            self._pool.submit(self._sample, t)
            self.rss.append((t, self.serve.rss_mib()))
            self._stop.wait(self.every)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15.0)
        self._pool.shutdown(wait=True)

    def first(self, after: float, pred: Any) -> float | None:
        for t, healthy, restarts, in_flight in sorted(self.samples):
            if t >= after and pred(healthy, restarts, in_flight):
                return t
        return None
