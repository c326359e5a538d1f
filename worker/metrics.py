"""Counters and histograms kept by a worker, read by the Stats rpc.

Plain Python, thread-safe enough for CPython's GIL (single int/float adds);
the gateway turns them into Prometheus metrics. Bucket bounds are fixed so
that histograms from several workers add up.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BOUNDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # last: +Inf
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.buckets[bisect.bisect_left(self.bounds, value)] += 1
            self.sum += value

    def cumulative(self) -> list[int]:
        out, total = [], 0
        for c in self.buckets:
            total += c
            out.append(total)
        return out

    @property
    def count(self) -> int:
        return sum(self.buckets)


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[str, float] = defaultdict(float)
        self.histograms: dict[str, Histogram] = {}

    def inc(self, name: str, value: float = 1.0) -> None:
        self.counters[name] += value

    def hist(self, name: str, bounds: tuple[float, ...] = LATENCY_BOUNDS) -> Histogram:
        h = self.histograms.get(name)
        if h is None:
            h = self.histograms.setdefault(name, Histogram(bounds))
        return h

    def observe(self, name: str, value: float, bounds: tuple[float, ...] = LATENCY_BOUNDS) -> None:
        self.hist(name, bounds).observe(value)
