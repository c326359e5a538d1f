"""One Recommend through a real `recgen serve` and its worker process: one connected trace, the
request id in the response headers and the access line, failures logged at WARNING.

Both processes export their spans with RECGEN_TRACE_FILE (recgen/tracing.py: the SDK, one JSON
line per finished span, the file shared): the caller's traceparent must be the root of the
gateway's server span, and the worker's spans must hang under the gateway's, in the same trace.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procs import Gateway, env

pytestmark = pytest.mark.e2e

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def _spans(path: Path, trace_id: str, want: set[str], timeout: float = 15.0) -> list[dict]:
    """The spans of `trace_id` in the shared file, once one of each kind in `want` has ended."""
    deadline = time.monotonic() + timeout
    spans: list[dict] = []
    while time.monotonic() < deadline:
        if path.exists():
            spans = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            spans = [s for s in spans if s["trace_id"] == trace_id]
            if want <= {s["service"] for s in spans}:
                return spans
        time.sleep(0.1)
    return spans


def test_one_recommend_is_one_trace_across_gateway_and_worker(model_root: Path, tmp_path: Path) -> None:
    trace_file = tmp_path / "spans.jsonl"
    with Gateway(
        model_root,
        tmp_path / "state.db",
        "--workers",
        "1",
        log_dir=tmp_path,
        environ=env(RECGEN_TRACE_FILE=str(trace_file)),
    ) as gw:
        with grpc.insecure_channel(gw.target) as ch:
            stub = pbg.RecommenderStub(ch)
            resp, call = stub.Recommend.with_call(
                pb.RecommendRequest(user_id="trace-user", k=3),
                metadata=[("traceparent", TRACEPARENT), ("x-request-id", "req-e2e-1")],
                timeout=30,
            )
            # The id rides on the trailers (the header copy is opt-in: --request-id-header).
            assert dict(call.trailing_metadata())["x-request-id"] == "req-e2e-1" == resp.request_id
            assert "x-request-id" not in dict(call.initial_metadata())
            with pytest.raises(grpc.RpcError) as e:
                stub.SimilarItems(pb.SimilarItemsRequest(item_id="no-such-item", k=3), timeout=10)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert dict(e.value.trailing_metadata()).get("x-request-id")
        spans = _spans(trace_file, CALLER_TRACE, {"recgen-gateway", "recgen-worker"})
    assert len(resp.items) == 3

    gateway = [s for s in spans if s["service"] == "recgen-gateway"]
    worker = [s for s in spans if s["service"] == "recgen-worker"]
    server = next(s for s in gateway if s["name"] == "recgen.v1.Recommender/Recommend")
    assert server["parent_span_id"] == CALLER_SPAN and server["kind"] == "SERVER"
    assert server["attributes"]["recgen.request_id"] == "req-e2e-1"
    assert worker, (
        "the worker exported no span of the caller's trace: the gateway→worker hop does not carry "
        f"the traceparent (spans seen: {[(s['service'], s['name']) for s in spans]})"
    )
    # One connected tree: every span's parent is a span of the trace, or the caller's.
    ids = {s["span_id"] for s in spans} | {CALLER_SPAN}
    assert all(s["parent_span_id"] in ids for s in spans), spans
    gateway_ids = {s["span_id"] for s in gateway}
    assert any(s["parent_span_id"] in gateway_ids for s in worker)  # the hop: worker under gateway
    assert {s["pid"] for s in worker} != {server["pid"]}  # two processes

    log = (tmp_path / "serve.log").read_text()
    access = [line for line in log.splitlines() if "recgen.access" in line]
    ok = next(line for line in access if "Recommend OK" in line)
    assert " INFO " in ok and "[rid=req-e2e-1]" in ok and "k=3" in ok and "user=u:" in ok
    failed = next(line for line in access if "SimilarItems NOT_FOUND" in line)
    assert " WARNING " in failed
    assert "trace-user" not in log  # the user appears only as a pseudonym
