"""The operator targets (`make chaos`, `make eval`, `make loadtest`, `make bench`) in a quick, bounded
form, run as an operator runs them (`python -m tools.X`), each asserting the claim its doc makes.

Ratios and latencies are not judged here (CI machines are noisy); what a target claims that does not
depend on the machine is: chaos loses and duplicates no acknowledged event and a worker kill fails
at most 1 % of requests; replay feedback lifts HR@10 for known users; a bounded load gets no
status but OK / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED; the bench computes every ratio. Each
tool also exits non-zero when its claim fails, so the full `make` targets assert the same.

Output goes under tmp_path, never into docs/. Measured on a 2-core machine at load average ~12
(other jobs), on the session's tiny model version: chaos 68 s, eval 66 s, loadtest 12 s; bench
--smoke 59-100 s at load average 3.5-5 (77 s at load average 3.3 with its growth phase, 8 s of it).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tools.harness.procs import ROOT, env

pytestmark = pytest.mark.e2e


def run_tool(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m ARGS` from the repository root, as the Makefile runs it; output kept for the failure."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env(ROOT, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def passed(r: subprocess.CompletedProcess[str]) -> str:
    """The end of the tool's output, for the assertion message."""
    return f"exit {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}"


def test_chaos_quick_loses_no_acknowledged_event_and_survives_a_worker_kill(
    model_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "chaos.json"
    r = run_tool(
        "tools.chaos",
        "--models",
        str(model_root),
        "--quick",
        "--only",
        "sigkill,durability",
        "--workdir",
        str(tmp_path / "chaos"),
        "--json",
        str(out),
        timeout=300,
    )
    assert r.returncode == 0, passed(r)
    res = json.loads(out.read_text())["results"]
    du = res["durability"]
    assert len(du["cycles"]) >= 5 and du["acknowledged"] > 100, du
    assert du["lost"] == 0 and du["duplicated"] == 0 and du["payload_mismatch"] == 0, du
    assert du["never_acknowledged"] == 0, du
    kill = res["worker_sigkill"]
    assert kill["requests"] > 50, kill
    assert kill["error_rate"] <= 0.01, kill["status_counts"]
    assert kill["restarted"] and kill["victim_killed_by_gateway"], kill


def test_eval_quick_feedback_lifts_hit_rate_for_known_users(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    r = run_tool(
        "tools.replay_eval",
        "--quick",
        "--max-events",
        "1000",
        "--factors",
        "16",
        "--iterations",
        "6",
        "--workers",
        "1",
        "--out",
        str(out),
        timeout=300,
    )
    assert r.returncode == 0, passed(r)
    known = json.loads(out.read_text())["results"]["known"]
    assert known["arms"]["feedback"]["events"] > 100, known
    assert known["lift_feedback_over_static"]["hit_rate@10"]["lift"] > 0, known


def test_loadtest_quick_gets_no_unexpected_status(model_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "loadtest.json"
    r = run_tool(
        "tools.loadtest",
        "--serve",
        str(model_root),
        "--serve-workers",
        "1",
        "--sweep-concurrency",
        "1,4",
        "--rate",
        "20",
        "--max-requests",
        "80",
        "--explain-share",
        "0.1",
        "--stream-share",
        "0.1",
        "--feedback-share",
        "0.2",
        "--text-timeout",
        "30",
        "--json",
        str(out),
        timeout=240,
    )
    assert r.returncode == 0, passed(r)
    reports = json.loads(out.read_text())["reports"]
    assert [(x["mode"], x["concurrency"] or x["rate"]) for x in reports] == [
        ("closed", 1),
        ("closed", 4),
        ("open", 20.0),
    ]
    for rep in reports:
        assert rep["requests"] == 80, rep["status_counts"]
        assert set(rep["status_counts"]) <= {"OK", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
        assert rep["ok"] > 0 and set(rep["kinds"]) == {"recommend", "explain", "stream", "feedback"}


def bench_ratios(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = doc.get("ratios")
    assert isinstance(rows, list) and rows, f"no ratios in the bench JSON: {sorted(doc)}"
    return rows


def test_bench_smoke_computes_every_ratio(model_root: Path, tmp_path: Path) -> None:
    # `--quick` is 4-8 min on 2 cores, too long for CI; `--smoke` runs every phase at its smallest.
    out_dir = tmp_path / "bench"
    r = run_tool(
        "tools.bench",
        "--smoke",
        "--models",
        str(model_root),
        "--out",
        str(out_dir),
        "--work",
        str(tmp_path / "work"),
        timeout=300,
    )
    out = out_dir / "bench.json"
    assert out.is_file(), passed(r)
    doc = json.loads(out.read_text())
    assert not doc.get("errors"), doc["errors"]
    assert r.returncode == 0, passed(r)
    assert doc["mode"] == "smoke" and doc["skipped"] == [], doc["plan"]
    phases = {"server", "rank", "baselines", "retrieval", "growth"}
    assert set(doc["phase_seconds"]) == phases, doc["phase_seconds"]
    rows = bench_ratios(doc)
    missing = [r["metric"] for r in rows if r["ratio"] is None or not math.isfinite(float(r["ratio"]))]
    assert not missing, f"ratios not computed: {missing}"
    assert doc["uncomputed"] == [], doc["uncomputed"]
    # Every phase gave its ratios: generation at 1 and 32 against both baselines, Recommend against
    # echo, the rank path's cost (RecommendBatch included), retrieval against exact search, and the
    # growth exponents (synthetic versions served by real `recgen serve`s, tools.bench.growth).
    metrics = " | ".join(row["metric"] for row in rows)
    for part in (
        "gen tokens/s @1 vs PyTorch",
        "gen tokens/s @32 vs ONNX",
        "time to first model text p99 @32 vs @1",
        "Recommend saturation (ok/s) vs echo server",
        "server CPU-µs per Recommend (users with history, recgen)",
        "RecommendBatch(64) users/s (recgen) vs single-call",
        "retrieval 20K flat q/s (batched) vs exact",
        "growth exponent: Recommend p50 (users with history, 1 caller) flat in users",
        "growth exponent: Catalog cost only in retrieval: cold Recommend p50 (no retrieval) flat in items",
    ):
        assert part in metrics, (part, metrics)
    assert all(row["met"] is None for row in rows), "a smoke run judges no goal"
    assert (out_dir / "bench.png").is_file() and (out_dir / "bench_table.md").is_file()
