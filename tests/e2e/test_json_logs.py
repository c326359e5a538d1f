"""`--log-format json`: every line the gateway and its local workers log is one JSON object.

Log pipelines parse lines; one plain line from a worker (started without the format) or from
a library (FAISS's loader) breaks that. stdout keeps the one ready line ("recgen: serving on"),
a machine interface of its own; the logs are stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procs import Gateway

pytestmark = pytest.mark.e2e


def test_gateway_and_workers_log_json_lines(model_root: Path, tmp_path: Path) -> None:
    with Gateway(
        model_root,
        tmp_path / "state.db",
        "--workers",
        "2",
        cli_args=("--log-format", "json", "--log-level", "INFO"),
        log_dir=tmp_path,
    ) as gw:
        with grpc.insecure_channel(gw.target) as ch:
            pbg.RecommenderStub(ch).Recommend(
                pb.RecommendRequest(user_id="u1", k=3), metadata=[("x-request-id", "json-1")], timeout=30
            )
        workers = {pid for pid, _ in gw.worker_addresses()}
    log = (tmp_path / "serve.log").read_text().splitlines()
    # The harness heads the file with "=== <command>"; everything else is the processes' stderr.
    lines = [line for line in log if line.strip() and not line.startswith("=== ")]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {line!r}")
    assert len(workers) == 2
    pids = {r.get("process") or r.get("pid") for r in records}
    assert workers <= pids, f"worker processes {workers} logged nothing as JSON (pids seen: {pids})"
    # The access line: its fields as JSON keys, the caller's request id among them.
    access = [r for r in records if r["logger"] == "recgen.access"]
    assert len(access) == 1, access
    assert access[0]["request_id"] == "json-1" and access[0]["code"] == "OK"
    assert access[0]["method"] == "Recommend" and access[0]["k"] == 3
    assert access[0]["user"].startswith("u:") and access[0]["duration_ms"] > 0


def test_the_debug_line_of_a_stream_counts_the_items_it_streamed(model_root: Path, tmp_path: Path) -> None:
    # The items of a StreamRecommend go out in its first message; the debug line once read
    # them from the final one and said items=0.
    with Gateway(
        model_root,
        tmp_path / "state.db",
        "--workers",
        "1",
        cli_args=("--log-format", "json", "--log-level", "DEBUG"),
        log_dir=tmp_path,
    ) as gw:
        with grpc.insecure_channel(gw.target) as ch:
            stream = pbg.RecommenderStub(ch).StreamRecommend(
                pb.StreamRecommendRequest(request=pb.RecommendRequest(user_id="u1", k=3)), timeout=60
            )
            streamed = next(m.items for m in stream if m.HasField("items"))
            for _ in stream:
                pass
    log = (tmp_path / "serve.log").read_text().splitlines()
    records = [json.loads(line) for line in log if line.strip() and not line.startswith("=== ")]
    lines = [r for r in records if r.get("method") == "StreamRecommend" and r["logger"] == "server.service"]
    assert len(streamed.items) == 3 and len(lines) == 1, lines
    assert lines[0]["items"] == 3, lines[0]
