"""Prometheus metrics: scraped over HTTP from a real gateway, moving under load."""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procs import recgen, stop, wait_healthy

pytestmark = pytest.mark.e2e


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_move_under_load(model_root: Path, tmp_path: Path) -> None:
    proc = recgen(
        "serve",
        "--models",
        str(model_root),
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--workers",
        "1",
        "--state",
        str(tmp_path / "s.db"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        target = url = ""
        while not (target and url):
            line = proc.stdout.readline()
            assert line, "serve exited"
            if line.startswith("recgen: serving on "):
                target = line.split("serving on ")[1].strip()
            if line.startswith("recgen: metrics on "):
                url = line.split("metrics on ")[1].strip()
        wait_healthy(target, proc)
        before = scrape(url)
        with grpc.insecure_channel(target) as ch:
            s = pbg.RecommenderStub(ch)
            s.SendFeedback(
                pb.SendFeedbackRequest(
                    event_id="m-1", user_id="m0", item_id="50", type=pb.FEEDBACK_TYPE_CLICK
                ),
                timeout=10,
            )
            for i in range(20):  # m0 is a known user: fold-in, retrieval and scoring run
                s.Recommend(pb.RecommendRequest(user_id=f"m{i}", k=5), timeout=10)
            s.Recommend(pb.RecommendRequest(user_id="m", k=3, explain=True), timeout=30)
            with pytest.raises(grpc.RpcError):
                s.Recommend(pb.RecommendRequest(user_id=""), timeout=10)
        time.sleep(0.2)
        after = scrape(url)
        ok = 'recgen_requests_total{method="Recommend",code="OK"}'
        assert after[ok] - before.get(ok, 0) == 21
        assert after['recgen_requests_total{method="Recommend",code="INVALID_ARGUMENT"}'] == 1
        count = 'recgen_request_seconds_count{method="Recommend"}'
        assert after[count] - before.get(count, 0) == 22
        assert after["recgen_worker_rank_batch_size_count"] > before.get(
            "recgen_worker_rank_batch_size_count", 0
        )
        assert after["recgen_worker_ttft_seconds_count"] >= 1
        scoring = "recgen_worker_scoring_seconds_count"
        assert after[scoring] > before.get(scoring, 0)
        assert after['recgen_requests_total{method="SendFeedback",code="OK"}'] == 1
        assert after["recgen_workers_healthy"] == 1
        assert any(re.match(r'recgen_model_info\{version="[^"]+"\}', k) for k in after)
    finally:
        if proc.stdout:
            proc.stdout.close()
        assert stop(proc, signal.SIGTERM) == 0
