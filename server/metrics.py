"""Prometheus metrics of the gateway on prometheus_client, with its workers' figures.

`GatewayMetrics` owns one CollectorRegistry (never the process-global
default, so a test can run several gateways in one process). Its public-API
series follow the usual gRPC names and labels (grpc_service, grpc_method,
grpc_type, grpc_code): `grpc_server_started_total`,
`grpc_server_handled_total` and the `grpc_server_handling_seconds` histogram,
whose `text` label keeps Recommend-with-text (p99 ~11-13 s) apart from the
plain ranking calls (milliseconds), with buckets up to 60 s. Beside them: the
gateway's in-flight requests, the SQLite WAL size, process and platform
metrics, `recgen_build_info` and `recgen_model_info`, and the workers'
figures (server/worker_metrics.py) pulled at scrape time.

The ErrorStatus interceptor (server/errors.py) calls `observe_request` once
per call of the public service, rejected ones (RESOURCE_EXHAUSTED) included.
This module does not serve HTTP (server/metrics_http.py does).
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

import recgen
from recgen.v1 import recommender_pb2
from server.worker_metrics import WorkerCollector
from server.workers import WorkerPool

# The text format would show each counter's and histogram's creation time as one
# more gauge series per label set; Prometheus does not use them. Process-wide.
disable_created_metrics()

SERVICE = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"]
SERVICE_NAME = SERVICE.full_name

# Seconds. Dense where ranking lives (ms), then 10-60 s where text lives: the
# documented explain p99 (11-13 s) falls between buckets, not above the top one.
HANDLING_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0, 20.0, 30.0, 60.0,
)  # fmt: skip


def _grpc_type(method: str) -> str:
    """go-grpc-prometheus' grpc_type of a method of the public service."""
    m = SERVICE.methods_by_name.get(method)
    if m is None:
        return "unary"
    return {
        (False, False): "unary",
        (False, True): "server_stream",
        (True, False): "client_stream",
        (True, True): "bidi_stream",
    }[m.client_streaming, m.server_streaming]


def _build_labels() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {
        "version": recgen.__version__,
        "python": platform.python_version(),
        "grpcio": version("grpcio"),
        "onnxruntime": version("onnxruntime"),
        "faiss": version("faiss-cpu"),
    }


def _size(path: Path) -> float:
    """Bytes in the file; 0 when there is none (SQLite removes the WAL at a clean close)."""
    try:
        return float(path.stat().st_size)
    except FileNotFoundError:
        return 0.0


class GatewayMetrics:
    """The gateway's registry. `observe_request` per finished call; `in_flight` set before a scrape.

    state_path: the SQLite state file, whose `-wal` file's size is read at each
    scrape (`recgen_state_wal_bytes`); None (PostgreSQL, or not wired) exports
    no WAL gauge unless `set_wal_bytes` is called.
    """

    def __init__(self, *, state_path: Path | str | None = None, service: str = SERVICE_NAME) -> None:
        self.service = service
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.started = Counter(
            "grpc_server_started",
            "public rpcs started",
            ["grpc_service", "grpc_method", "grpc_type"],
            registry=r,
        )
        self.handled = Counter(
            "grpc_server_handled",
            "public rpcs finished, by status code (rejected calls are RESOURCE_EXHAUSTED)",
            ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
            registry=r,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "public rpc latency until the status; text=true: a generated text was asked for",
            ["grpc_service", "grpc_method", "grpc_type", "text"],
            buckets=HANDLING_BUCKETS,
            registry=r,
        )
        self._in_flight = Gauge("recgen_in_flight_requests", "public requests being served", registry=r)
        self._in_flight_n = 0
        Info("recgen_build", "the recgen build and its serving libraries", registry=r).info(_build_labels())
        self._model = Gauge(
            "recgen_model_info", "the model version served (value 1)", ["version"], registry=r
        )
        self._model_version: str | None = None
        self._wal = Gauge("recgen_state_wal_bytes", "size of the SQLite state store's WAL file", registry=r)
        if state_path is not None:
            wal = Path(str(state_path) + "-wal")
            self._wal.set_function(lambda: _size(wal))
        else:
            self.registry.unregister(self._wal)  # no file to measure: no misleading 0
        self._wal_registered = state_path is not None
        self.workers: WorkerCollector | None = None
        # Until the interceptor reports starts itself (request_started), a call is counted
        # as started when it finishes, so started_total never trails handled_total.
        self._starts_reported = False
        self._children: dict[tuple[Any, ...], Any] = {}  # see _child
        for m in SERVICE.methods_by_name:  # every method's series exist from the start: rate() works at once
            self.started.labels(service, m, _grpc_type(m))
            self.handled.labels(service, m, _grpc_type(m), grpc.StatusCode.OK.name)

    @property
    def in_flight(self) -> int:
        return self._in_flight_n

    @in_flight.setter
    def in_flight(self, n: int) -> None:  # server/main.py sets it from Admission before each scrape
        self._in_flight_n = n
        self._in_flight.set(n)

    def request_started(self, method: str) -> None:
        self._starts_reported = True
        self._child(self.started, method).inc()

    def observe_request(
        self, method: str, code: grpc.StatusCode, seconds: float, *, text: bool = False
    ) -> None:
        if not self._starts_reported:
            self._child(self.started, method).inc()
        self._child(self.handled, method, code.name).inc()
        self._child(self.handling, method, "true" if text else "false").observe(seconds)

    def _child(self, metric: Any, method: str, *extra: str) -> Any:
        """metric.labels(service, method, grpc_type, *extra), kept: `labels` takes a lock and
        builds its key on every call (~10 µs, three times per call)."""
        key = (id(metric), method, *extra)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.service, method, _grpc_type(method), *extra)
        return child

    def set_wal_bytes(self, n: int) -> None:
        """For a store whose WAL is not a file beside it; the first call exports the gauge."""
        if not self._wal_registered:
            self.registry.register(self._wal)
            self._wal_registered = True
        self._wal.set(n)

    def set_model_version(self, version: str) -> None:
        if version != self._model_version:
            if self._model_version is not None:
                self._model.remove(self._model_version)
            self._model.labels(version).set(1)
            self._model_version = version

    def watch(self, pool: WorkerPool) -> WorkerCollector:
        """The pool's figures join this registry (once)."""
        if self.workers is None:
            self.workers = WorkerCollector(pool)
            self.registry.register(self.workers)
        return self.workers

    async def exposition(self) -> bytes:
        """The Prometheus text format, after asking the workers for their Stats."""
        if self.workers is not None:
            await self.workers.refresh()
        return generate_latest(self.registry)


async def render(gm: GatewayMetrics, pool: WorkerPool, model_version: str) -> str:
    """One scrape: the gateway's series and its workers', in the Prometheus text format."""
    gm.watch(pool)
    gm.set_model_version(model_version)
    return (await gm.exposition()).decode()
