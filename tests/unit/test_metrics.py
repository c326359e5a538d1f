"""The /metrics exposition, parsed back with prometheus_client's own parser.

The gateway's registry (server/metrics.py) and the workers' collector
(server/worker_metrics.py), the latter over real gRPC servers on unix sockets
that answer the Worker service's Stats rpc with known figures, one of them too
slow: types, labels, bucket placement and the sums over workers are checked
on the parsed families, not on strings.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import recgen
from recgen.config import WorkerConfig
from recgen.worker.v1 import worker_pb2, worker_pb2_grpc
from server.metrics import HANDLING_BUCKETS, SERVICE_NAME, GatewayMetrics, render
from server.workers import Worker, WorkerPool

GRPC_LABELS = {"grpc_service", "grpc_method", "grpc_type"}


def families(text: str) -> dict[str, tuple[str, list[Sample]]]:
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def value(samples: list[Sample], metric: str, **labels: str) -> float:
    hits = [
        s.value for s in samples if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(hits) == 1, (metric, labels, hits)
    return hits[0]


def test_gateway_series_types_labels_and_buckets(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (x BLOB)")
    con.execute("INSERT INTO t VALUES (zeroblob(100000))")
    con.commit()  # the WAL file holds the pages until a checkpoint
    gm = GatewayMetrics(state_path=db)
    gm.observe_request("Recommend", grpc.StatusCode.OK, 0.004)
    gm.observe_request("Recommend", grpc.StatusCode.OK, 12.0, text=True)  # the explain p99 region
    gm.observe_request("Recommend", grpc.StatusCode.RESOURCE_EXHAUSTED, 0.0001)
    gm.observe_request("StreamRecommend", grpc.StatusCode.OK, 40.0, text=True)
    gm.in_flight = 3
    f = families(asyncio.run(render(gm, WorkerPool(WorkerConfig(), 0), "v7")))
    wal_bytes = Path(f"{db}-wal").stat().st_size
    con.close()  # the last connection checkpoints and removes the WAL

    kind, started = f["grpc_server_started"]
    assert kind == "counter"
    assert value(started, "grpc_server_started_total", grpc_method="Recommend") == 3
    assert {s.labels["grpc_type"] for s in started} >= {"unary", "server_stream", "client_stream"}
    kind, handled = f["grpc_server_handled"]
    assert kind == "counter"
    assert all(set(s.labels) == GRPC_LABELS | {"grpc_code"} for s in handled)
    assert value(handled, "grpc_server_handled_total", grpc_method="Recommend", grpc_code="OK") == 2
    assert value(handled, "grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED") == 1
    # Every method's OK series exists before its first call (rate() needs no warm-up).
    assert value(handled, "grpc_server_handled_total", grpc_method="SimilarItems", grpc_code="OK") == 0

    kind, hist = f["grpc_server_handling_seconds"]
    assert kind == "histogram"
    assert HANDLING_BUCKETS[-1] >= 30.0
    text_rec = {"grpc_method": "Recommend", "text": "true", "grpc_service": SERVICE_NAME}
    buckets = {
        s.labels["le"]: s.value
        for s in hist
        if s.name.endswith("_bucket") and text_rec.items() <= s.labels.items()
    }
    assert buckets["10.0"] == 0 and buckets["12.5"] == 1  # 12 s lands below the top, not in +Inf
    assert value(hist, "grpc_server_handling_seconds_count", grpc_method="Recommend", text="false") == 2
    stream = {
        s.labels["le"]: s.value
        for s in hist
        if s.name.endswith("_bucket") and s.labels["grpc_method"] == "StreamRecommend"
    }
    assert stream["60.0"] == 1 and stream["30.0"] == 0

    assert f["recgen_in_flight_requests"] == ("gauge", [Sample("recgen_in_flight_requests", {}, 3.0)])
    kind, build = f["recgen_build_info"]  # an Info is a gauge of value 1 in the text format
    assert kind == "gauge" and build[0].labels["version"] == recgen.__version__
    assert value(f["recgen_model_info"][1], "recgen_model_info", version="v7") == 1
    assert f["recgen_state_wal_bytes"][0] == "gauge"
    assert f["recgen_state_wal_bytes"][1][0].value == wal_bytes > 100000
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"):
        assert name in f, name
    assert f["recgen_workers_healthy"] == ("gauge", [Sample("recgen_workers_healthy", {}, 0.0)])
    assert f["recgen_shards_unserved"][1][0].value == 1


def test_no_wal_gauge_without_a_file() -> None:
    gm = GatewayMetrics()
    assert "recgen_state_wal_bytes" not in asyncio.run(gm.exposition()).decode()
    gm.set_wal_bytes(4096)
    assert "recgen_state_wal_bytes 4096.0" in asyncio.run(gm.exposition()).decode()


class _Stats(worker_pb2_grpc.WorkerServicer):
    """A Worker service that answers Stats only, with the figures it is given."""

    def __init__(self, reply: worker_pb2.StatsResponse, delay: float = 0.0) -> None:
        self.reply, self.delay = reply, delay

    async def Stats(
        self, request: worker_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.StatsResponse:
        await asyncio.sleep(self.delay)
        return self.reply


def _stats(
    running: float, tokens: float, rows: float, counts: list[int], total: float
) -> worker_pb2.StatsResponse:
    return worker_pb2.StatsResponse(
        model_version="v1",
        queue_depth=2,
        counters={
            "llm_running": running,
            "llm_queue_depth": 1,
            "llm_tokens_generated": tokens,
            "llm_max_rows_per_step": rows,
        },
        histograms={"ttft_seconds": worker_pb2.Histogram(bounds=[0.1, 1.0], counts=counts, sum=total)},
    )


async def _scrape_workers(tmp_path: Path) -> tuple[str, float]:
    replies = [
        (_stats(2, 100, 4, [1, 3, 3], 2.0), 0.0),
        (_stats(1, 50, 7, [0, 1, 2], 9.0), 0.0),
        (_stats(99, 9999, 99, [9, 9, 9], 99.0), 5.0),  # hung: answers after the scrape's timeout
    ]
    servers, pool = [], WorkerPool(WorkerConfig(), 0)
    for i, (reply, delay) in enumerate(replies):
        server = grpc.aio.server()
        worker_pb2_grpc.add_WorkerServicer_to_server(_Stats(reply, delay), server)
        address = f"unix:{tmp_path}/w{i}.sock"
        server.add_insecure_port(address)
        await server.start()
        servers.append(server)
        w = Worker(f"w{i}", address, local=True, healthy=True)
        w.connect()
        pool.workers.append(w)
    pool.workers.append(Worker("down", f"unix:{tmp_path}/none.sock", local=True))  # out of rotation
    gm = GatewayMetrics()
    gm.watch(pool).timeout = 0.5
    try:
        t0 = time.perf_counter()
        text = await render(gm, pool, "v1")
        return text, time.perf_counter() - t0
    finally:
        for w in pool.workers:
            await w.close_channel()
        for s in servers:
            await s.stop(None)


def test_worker_figures_typed_and_summed(tmp_path: Path) -> None:
    text, seconds = asyncio.run(_scrape_workers(tmp_path))
    assert seconds < 2.0  # one hung worker costs the scrape its timeout, not its 5 s
    f = families(text)
    assert f["recgen_workers"][1][0].value == 4
    assert f["recgen_workers_healthy"][1][0].value == 3
    assert f["recgen_workers_scraped"][1][0].value == 2  # the hung one is left out
    assert f["recgen_worker_model_versions"][1] == [
        Sample("recgen_worker_model_versions", {"version": "v1"}, 2.0)
    ]
    # Levels are gauges (llm_running went 2 -> 0 as a counter before), summed over workers ...
    assert f["recgen_llm_running"] == ("gauge", [Sample("recgen_llm_running", {}, 3.0)])
    assert f["recgen_llm_queue_depth"][1][0].value == 2
    assert f["recgen_worker_queue_depth"] == ("gauge", [Sample("recgen_worker_queue_depth", {}, 4.0)])
    # ... except a per-worker maximum, which is the maximum.
    assert f["recgen_llm_max_rows_per_step"][1][0].value == 7
    kind, events = f["recgen_worker_events"]
    assert kind == "counter"
    assert value(events, "recgen_worker_events_total", name="llm_tokens_generated") == 150
    assert not any(s.labels.get("name") in {"llm_running", "llm_queue_depth"} for s in events)
    kind, ttft = f["recgen_worker_ttft_seconds"]
    assert kind == "histogram"
    assert [s.value for s in ttft if s.name.endswith("_bucket")] == [1, 4, 5]
    assert value(ttft, "recgen_worker_ttft_seconds_count") == 5
    assert value(ttft, "recgen_worker_ttft_seconds_sum") == pytest.approx(11.0)
