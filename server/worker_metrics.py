"""The workers' figures as Prometheus metrics: a prometheus_client Collector over the pool.

At each scrape `refresh()` asks every worker in rotation for its Stats rpc
(each with its own timeout, all at once, so one hung worker costs the scrape
at most that timeout and hides only its own figures); `collect()` then yields
typed families from those answers: counters summed over workers, gauges
summed, histograms (fixed buckets in worker/metrics.py) summed bucket by
bucket. The pool's own state (workers in rotation, restarts, shards without a
worker) is read live in `collect()`.

The Stats rpc carries one map of numbers, `counters`; the few entries in it
that go down as well as up are named in `WORKER_GAUGES` and exported as
gauges. This module does not serve HTTP (server/metrics_http.py) and keeps no
gateway figures (server/metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from recgen.worker.v1 import worker_pb2
from server.workers import Worker, WorkerPool

LOG = logging.getLogger(__name__)

STATS_TIMEOUT_S = 1.0  # per worker and scrape; Prometheus' default scrape timeout is 10 s

# Entries of StatsResponse.counters that are levels, not running totals:
# name -> (exported metric, how workers combine, help).
WORKER_GAUGES: dict[str, tuple[str, str, str]] = {
    "llm_queue_depth": ("recgen_llm_queue_depth", "sum", "generations waiting to join the LLM batch"),
    "llm_running": ("recgen_llm_running", "sum", "generations in the running LLM batch (rows)"),
    "llm_max_rows_per_step": (
        "recgen_llm_max_rows_per_step",
        "max",
        "most sequences one LLM decode step has carried, over workers",
    ),
}

# Worker histograms and what they measure, exported as recgen_worker_<name>; others
# the workers report are exported too, with a generic help text.
WORKER_HISTOGRAMS = {
    "rank_queue_seconds": "time a rank request waited for its batch",
    "rank_batch_size": "requests per rank batch",
    "foldin_seconds": "fold-in solve per batch",
    "retrieval_seconds": "FAISS search per batch",
    "scoring_seconds": "ONNX scoring per batch",
    "ttft_seconds": "time to the first text piece of a generation",
    "time_per_token_seconds": "mean time per generated token of a generation",
}


@dataclass
class _Summed:
    """One scrape's worker figures, combined over the workers that answered."""

    answered: int = 0
    queue_depth: int = 0
    versions: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # model version -> workers
    counters: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    gauges: dict[str, float] = field(default_factory=dict)
    # name -> (bounds, cumulative counts with +Inf last, sum)
    histograms: dict[str, tuple[tuple[float, ...], list[int], float]] = field(default_factory=dict)

    def add(self, s: worker_pb2.StatsResponse) -> None:
        self.answered += 1
        self.queue_depth += s.queue_depth
        self.versions[s.model_version] += 1
        for k, v in s.counters.items():
            if k in WORKER_GAUGES:
                how = WORKER_GAUGES[k][1]
                prev = self.gauges.get(k)
                self.gauges[k] = v if prev is None else (prev + v if how == "sum" else max(prev, v))
            else:
                self.counters[k] += v
        for k, h in s.histograms.items():
            bounds, counts = tuple(h.bounds), list(h.counts)
            if len(counts) != len(bounds) + 1:
                continue  # malformed: not Prometheus-style cumulative buckets
            prev_h = self.histograms.get(k)
            if prev_h is None:
                self.histograms[k] = (bounds, counts, h.sum)
            elif prev_h[0] == bounds:
                summed = [a + b for a, b in zip(prev_h[1], counts, strict=True)]
                self.histograms[k] = (bounds, summed, prev_h[2] + h.sum)
            else:  # a worker of another build with other buckets: they cannot be added
                LOG.debug("worker histogram %s: bounds differ between workers; one kept", k)


class WorkerCollector(Collector):
    """The pool's workers, pulled by `refresh()` and yielded by `collect()`."""

    def __init__(self, pool: WorkerPool, timeout: float = STATS_TIMEOUT_S) -> None:
        self.pool = pool
        self.timeout = timeout
        self._last = _Summed()

    async def _stats(self, w: Worker) -> worker_pb2.StatsResponse | None:
        if not w.healthy or w.stub is None:
            return None
        try:
            return await asyncio.wait_for(
                w.stub.Stats(worker_pb2.StatsRequest(), timeout=self.timeout), self.timeout
            )
        except (grpc.aio.AioRpcError, TimeoutError):
            return None

    async def refresh(self) -> None:
        """Ask every worker in rotation for its Stats (concurrently, `timeout` each)."""
        answers = await asyncio.gather(*(self._stats(w) for w in self.pool.workers))
        summed = _Summed()
        for s in answers:
            if s is not None:
                summed.add(s)
        self._last = summed

    def collect(self) -> Iterator[Metric]:
        pool, last = self.pool, self._last
        yield GaugeMetricFamily("recgen_workers", "model workers known to the gateway", len(pool.workers))
        yield GaugeMetricFamily("recgen_workers_healthy", "workers in rotation", pool.healthy_count)
        yield GaugeMetricFamily(
            "recgen_shards_unserved", "catalog shards with no worker in rotation", len(pool.unserved_shards())
        )
        yield CounterMetricFamily("recgen_worker_restarts", "worker processes restarted", pool.restarts)
        yield GaugeMetricFamily(
            "recgen_workers_scraped", "workers whose Stats answered in this scrape", last.answered
        )
        versions = GaugeMetricFamily(
            "recgen_worker_model_versions",
            "workers serving each model version (two during a hot swap)",
            labels=["version"],
        )
        for version, n in sorted(last.versions.items()):
            versions.add_metric([version], n)
        yield versions
        yield GaugeMetricFamily(
            "recgen_worker_queue_depth", "rank requests waiting, summed over workers", last.queue_depth
        )
        for key, (name, _, help_) in WORKER_GAUGES.items():
            if key in last.gauges:
                yield GaugeMetricFamily(name, help_, last.gauges[key])
        events = CounterMetricFamily(
            "recgen_worker_events",
            "worker counters summed over workers (rank_requests, llm_tokens_generated, ...)",
            labels=["name"],
        )
        for k, v in sorted(last.counters.items()):
            events.add_metric([k], v)
        yield events
        for k, (bounds, cum, total) in sorted(last.histograms.items()):
            h = HistogramMetricFamily(f"recgen_worker_{k}", WORKER_HISTOGRAMS.get(k, f"worker histogram {k}"))
            buckets = [(_le(b), float(c)) for b, c in zip([*bounds, float("inf")], cum, strict=True)]
            h.add_metric([], buckets, total)
            yield h


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
