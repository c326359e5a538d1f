"""Prometheus metrics: scraped over HTTP from a real gateway with a real worker, moving under load.

One gateway (one worker, admission limit 1) serves the module. The scrape is
parsed with prometheus_client's parser and its types and labels asserted;
`promtool check metrics` lints the same live page and `promtool check rules`
the alert rules (skipped only where promtool is absent: `make metrics-check`
fetches it). Every metric the alert rules and the dashboard query must exist
in the live page.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procs import Gateway

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "recgen.json"
SERVICE = "recgen.v1.Recommender"


def promtool() -> str | None:
    """$PROMTOOL, promtool on PATH, or the copy `make metrics-check` unpacks under .cache/."""
    for cand in (
        os.environ.get("PROMTOOL"),
        shutil.which("promtool"),
        ROOT / ".cache/prometheus/usr/bin/promtool",
    ):
        if cand and Path(cand).is_file():
            return str(cand)
    return None


def page(gw: Gateway) -> str:
    return urllib.request.urlopen(gw.url, timeout=10).read().decode()


def families(text: str) -> dict[str, tuple[str, list[Sample]]]:
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def value(f: dict[str, tuple[str, list[Sample]]], family: str, metric: str, **labels: str) -> float:
    if family not in f:  # a worker histogram appears with its first observation
        return 0.0
    return sum(s.value for s in f[family][1] if s.name == metric and labels.items() <= s.labels.items())


@pytest.fixture(scope="module")
def gateway(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    state = tmp_path_factory.mktemp("metrics") / "s.db"
    gw = Gateway(model_root, state, "--workers", "1", "--max-in-flight", "1", metrics=True).start()
    try:
        yield gw
    finally:
        assert gw.stop() == 0


def test_metrics_typed_and_moving_under_load(gateway: Gateway) -> None:
    before = families(page(gateway))
    with grpc.insecure_channel(gateway.target) as ch:
        s = pbg.RecommenderStub(ch)
        s.SendFeedback(
            pb.SendFeedbackRequest(event_id="m-1", user_id="m0", item_id="50", type=pb.FEEDBACK_TYPE_CLICK),
            timeout=10,
        )
        for i in range(20):  # m0 is a known user: fold-in, retrieval and scoring run
            s.Recommend(pb.RecommendRequest(user_id=f"m{i}", k=5), timeout=10)
        s.Recommend(pb.RecommendRequest(user_id="m", k=3, explain=True), timeout=30)
        with pytest.raises(grpc.RpcError):
            s.Recommend(pb.RecommendRequest(user_id=""), timeout=10)

        # A stopped worker holds the one admitted call; the next is rejected, and counted.
        (worker,) = gateway.worker_pids()
        held: list[grpc.StatusCode] = []

        def hold() -> None:
            try:
                s.Recommend(pb.RecommendRequest(user_id="m1", k=5), timeout=20)
                held.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                held.append(e.code())

        os.kill(worker, signal.SIGSTOP)
        try:
            t = threading.Thread(target=hold)
            t.start()
            time.sleep(0.4)
            with pytest.raises(grpc.RpcError) as rejected:
                s.Recommend(pb.RecommendRequest(user_id="m2", k=5), timeout=10)
            during = families(page(gateway))  # asks the stopped worker: its 1 s timeout, then without it
        finally:
            os.kill(worker, signal.SIGCONT)
        t.join(30)
    assert rejected.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert held == [grpc.StatusCode.OK]
    assert during["recgen_in_flight_requests"][1][0].value == 1
    assert during["recgen_workers_scraped"][1][0].value == 0
    t_end = time.monotonic() + 15  # a worker taken out while stopped comes back by itself
    after = families(page(gateway))
    while after["recgen_workers_healthy"][1][0].value < 1 and time.monotonic() < t_end:
        time.sleep(0.2)
        after = families(page(gateway))

    def delta(family: str, metric: str, **labels: str) -> float:
        return value(after, family, metric, **labels) - value(before, family, metric, **labels)

    # Types: what goes down is a gauge, what only grows a counter, latencies histograms.
    expected = {
        "grpc_server_started": "counter",
        "grpc_server_handled": "counter",
        "grpc_server_handling_seconds": "histogram",
        "recgen_in_flight_requests": "gauge",
        "recgen_workers_healthy": "gauge",
        "recgen_worker_queue_depth": "gauge",
        "recgen_llm_running": "gauge",
        "recgen_llm_queue_depth": "gauge",
        "recgen_worker_events": "counter",
        "recgen_worker_restarts": "counter",
        "recgen_worker_ttft_seconds": "histogram",
        "recgen_worker_scoring_seconds": "histogram",
        "recgen_build_info": "gauge",
        "recgen_state_wal_bytes": "gauge",
        "process_cpu_seconds": "counter",
        "process_resident_memory_bytes": "gauge",
    }
    assert {name: after[name][0] for name in expected if name in after} == expected
    for sample in after["grpc_server_handled"][1]:
        assert set(sample.labels) == {"grpc_service", "grpc_method", "grpc_type", "grpc_code"}
        assert sample.labels["grpc_service"] == SERVICE
    rec = {"grpc_method": "Recommend"}
    handled, started = "grpc_server_handled", "grpc_server_started"
    assert delta(handled, "grpc_server_handled_total", grpc_code="OK", **rec) == 22
    assert delta(handled, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **rec) == 1
    assert delta(handled, "grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED", **rec) == 1
    assert delta(handled, "grpc_server_handled_total", grpc_code="OK", grpc_method="SendFeedback") == 1
    assert value(after, started, "grpc_server_started_total", **rec) >= value(
        after, handled, "grpc_server_handled_total", **rec
    )
    hist = "grpc_server_handling_seconds"
    assert delta(hist, f"{hist}_count", text="true", **rec) == 1  # the explained one, in its own series
    assert delta(hist, f"{hist}_count", text="false", **rec) == 23
    assert value(after, hist, f"{hist}_bucket", le="30.0", text="false", **rec) == value(
        after, hist, f"{hist}_count", text="false", **rec
    )
    assert after["recgen_in_flight_requests"][1][0].value == 0
    assert after["recgen_workers_healthy"][1][0].value == 1
    assert after["recgen_workers_scraped"][1][0].value == 1
    assert after["recgen_llm_running"][1][0].value == 0  # a level, back to 0 once idle
    assert delta("recgen_worker_events", "recgen_worker_events_total", name="llm_tokens_generated") > 0
    assert delta("recgen_worker_rank_batch_size", "recgen_worker_rank_batch_size_count") > 0
    assert delta("recgen_worker_scoring_seconds", "recgen_worker_scoring_seconds_count") > 0
    assert value(after, "recgen_worker_ttft_seconds", "recgen_worker_ttft_seconds_count") >= 1
    assert after["recgen_state_wal_bytes"][1][0].value > 0  # feedback was written to the WAL
    assert after["recgen_build_info"][1][0].labels["version"]
    assert re.fullmatch(r"\S+", after["recgen_model_info"][1][0].labels["version"])


def _metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (ours and the standard process/gRPC ones)."""
    names = set(re.findall(r"\b((?:recgen|grpc_server|process)_[a-zA-Z0-9_]+)", expr))
    return {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in names}


def test_rules_and_dashboard_read_metrics_that_exist(gateway: Gateway) -> None:
    exposed = set(families(page(gateway)))
    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    alerts = {r.get("alert") for g in rules["groups"] for r in g["rules"]}
    assert {"RecgenNoHealthyWorker", "RecgenErrorRatioHigh", "RecgenLatencyP99High"} <= alerts
    assert {"RecgenQueueDepthHigh", "RecgenStateWalLarge"} <= alerts
    board = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    read = set().union(*(_metric_names(e) for e in exprs))
    assert read and read <= exposed, sorted(read - exposed)


@pytest.mark.skipif(promtool() is None, reason="promtool absent (make metrics-check fetches it)")
def test_promtool_accepts_live_metrics_and_rules(gateway: Gateway) -> None:
    tool = promtool()
    assert tool is not None
    lint = subprocess.run([tool, "check", "metrics"], input=page(gateway), capture_output=True, text=True)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
    rules = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
