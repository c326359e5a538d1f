"""Prometheus metrics of the gateway, plus its workers' metrics aggregated.

A small registry (counters and histograms with labels) rendered in the
Prometheus text format; no client library needed for this little. Worker
metrics are pulled at scrape time through each worker's Stats rpc and summed
over workers (their histogram buckets are fixed, so they add up). This
module does not serve HTTP (server/metrics_http.py does).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import defaultdict
from collections.abc import Iterable

import grpc

from recgen.worker.v1 import worker_pb2
from server.workers import WorkerPool

LOG = logging.getLogger(__name__)

LATENCY_BOUNDS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return "{" + inner + "}"


def _fmt(x: float) -> str:
    return repr(float(x)) if x != int(x) else str(int(x))


class _Hist:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v


class GatewayMetrics:
    def __init__(self) -> None:
        self.requests: dict[Labels, float] = defaultdict(float)  # method, code
        self.latency: dict[Labels, _Hist] = {}
        self.in_flight = 0

    def observe_request(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.requests[(("method", method), ("code", code.name))] += 1
        key = (("method", method),)
        h = self.latency.get(key)
        if h is None:
            h = self.latency[key] = _Hist(LATENCY_BOUNDS)
        h.observe(seconds)


def _counter(name: str, help_: str, samples: Iterable[tuple[Labels, float]]) -> list[str]:
    out = [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
    out += [f"{name}{_labels(lb)} {_fmt(v)}" for lb, v in samples]
    return out


def _gauge(name: str, help_: str, samples: Iterable[tuple[Labels, float]]) -> list[str]:
    out = [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
    out += [f"{name}{_labels(lb)} {_fmt(v)}" for lb, v in samples]
    return out


def _histogram(
    name: str, help_: str, samples: Iterable[tuple[Labels, tuple[float, ...], list[int], float]]
) -> list[str]:
    """samples: (labels, bounds, cumulative counts incl. +Inf last, sum)."""
    out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    for lb, bounds, cum, total in samples:
        for b, c in zip([*bounds, float("inf")], cum, strict=True):
            le = "+Inf" if b == float("inf") else _fmt(b)
            out.append(f"{name}_bucket{_labels((*lb, ('le', le)))} {c}")
        out.append(f"{name}_sum{_labels(lb)} {total!r}")
        out.append(f"{name}_count{_labels(lb)} {cum[-1]}")
    return out


def _cumulative(counts: list[int]) -> list[int]:
    out, total = [], 0
    for c in counts:
        total += c
        out.append(total)
    return out


# Worker histograms and what they measure, exported as recgen_worker_<name>.
WORKER_HISTOGRAMS = {
    "rank_queue_seconds": "time a rank request waited for its batch",
    "rank_batch_size": "requests per rank batch",
    "foldin_seconds": "fold-in solve per batch",
    "retrieval_seconds": "FAISS search per batch",
    "scoring_seconds": "ONNX scoring per batch",
    "ttft_seconds": "time to the first text piece of a generation",
    "time_per_token_seconds": "mean time per generated token of a generation",
}


async def _worker_stats(pool: WorkerPool) -> list[worker_pb2.StatsResponse]:
    async def one(w) -> worker_pb2.StatsResponse | None:  # type: ignore[no-untyped-def]
        if not w.healthy or w.stub is None:
            return None
        try:
            return await w.stub.Stats(worker_pb2.StatsRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return None

    return [s for s in await asyncio.gather(*(one(w) for w in pool.workers)) if s is not None]


async def render(gm: GatewayMetrics, pool: WorkerPool, model_version: str) -> str:
    lines: list[str] = []
    lines += _counter(
        "recgen_requests_total", "public rpcs by method and status code", sorted(gm.requests.items())
    )
    lines += _histogram(
        "recgen_request_seconds",
        "public rpc latency by method",
        [(lb, h.bounds, _cumulative(h.counts), h.sum) for lb, h in sorted(gm.latency.items())],
    )
    lines += _gauge("recgen_in_flight_requests", "public requests being served", [((), gm.in_flight)])
    lines += _gauge("recgen_workers_healthy", "workers in rotation", [((), pool.healthy_count)])
    lines += _counter("recgen_worker_restarts_total", "worker processes restarted", [((), pool.restarts)])
    lines += _gauge(
        "recgen_model_info", "the model version served (value 1)", [((("version", model_version),), 1)]
    )

    stats = await _worker_stats(pool)
    lines += _gauge(
        "recgen_worker_queue_depth",
        "rank requests waiting, summed over workers",
        [((), sum(s.queue_depth for s in stats))],
    )
    counters: dict[str, float] = defaultdict(float)
    hists: dict[str, tuple[tuple[float, ...], list[int], float]] = {}
    for s in stats:
        for k, v in s.counters.items():
            counters[k] += v
        for k, h in s.histograms.items():
            bounds = tuple(h.bounds)
            prev = hists.get(k)
            if prev is None:
                hists[k] = (bounds, list(h.counts), h.sum)
            elif prev[0] == bounds:
                hists[k] = (bounds, [a + b for a, b in zip(prev[1], h.counts, strict=True)], prev[2] + h.sum)
    lines += _counter(
        "recgen_worker_events_total",
        "worker counters summed over workers (rank_requests, llm_decode_steps, ...)",
        [((("name", k),), v) for k, v in sorted(counters.items())],
    )
    for name, help_ in WORKER_HISTOGRAMS.items():
        if name in hists:
            b, c, total = hists[name]
            lines += _histogram(f"recgen_worker_{name}", help_, [((), b, c, total)])
    return "\n".join(lines) + "\n"
