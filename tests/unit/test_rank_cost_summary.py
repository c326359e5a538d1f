"""The rank phase's verdict rows (tools/bench/summary.py) and stage table (tools/bench/rank_cost.py)
from a rank-phase document: every goal of issue 18 gets a finite ratio and a met/missed verdict."""

from __future__ import annotations

import math

from tools.bench.rank_cost import parse_variant, stage_table
from tools.bench.summary import markdown, ratios


def rank_doc() -> dict:
    def load(rate: float, gw: float, w0: float, w1: float) -> dict:
        cpu = {"gateway": gw, "worker0": w0, "worker1": w1}
        return {"answers_per_s": rate, "cpu_us_per_answer": cpu, "cpu_us_per_answer_total": gw + w0 + w1}

    variant = {
        "cold": {**load(900.0, 500.0, 100.0, 120.0), "ratio_cpu_vs_echo": 3.6},
        "history": {**load(800.0, 520.0, 150.0, 170.0), "ratio_cpu_vs_echo": 4.2},
        "p50_ms_one_caller": 2.5,
        "batch64": {"answers_per_s": 5000.0},
    }
    echo = {
        "answers_per_s": 2000.0,
        "cpu_us_per_answer_total": 200.0,
        "p50_ms_one_caller": 0.8,
        "batch64_answers_per_s": 40000.0,
    }
    return {"concurrency": 8, "echo": echo, "variants": {"after": variant}}


def test_every_rank_goal_has_a_finite_ratio_and_a_verdict() -> None:
    rows = [r for r in ratios({"rank": rank_doc()}) if "(" in r["metric"]]
    by_goal = {r["metric"]: r for r in rows}
    assert len(rows) == 6
    for r in rows:
        assert r["ratio"] is not None and math.isfinite(r["ratio"]), r
    cold = by_goal["server CPU-µs per Recommend (cold users, after) vs the empty server's per call"]
    assert cold["ratio"] == 3.6 and cold["met"] is False
    p50 = by_goal["Recommend p50 at one caller (after) vs 2 x echo p50 + 1 ms"]
    assert p50["baseline"] == 2.6 and p50["met"] is True
    batch = by_goal["RecommendBatch(64) users/s (after) vs single-call Recommend calls/s"]
    assert batch["ratio"] == 6.25 and batch["met"] is True
    assert "| **no** |" in markdown({"ratios": rows})


def test_stage_table_and_variant_flags() -> None:
    table = stage_table(rank_doc())
    assert "| after | cold | 900 | 500 | 220 | 720 | 3.60x |" in table
    v = parse_variant("nobatch=/tmp/x,--rank-batch=0")
    assert v.name == "nobatch" and str(v.root) == "/tmp/x" and v.serve_args == ("--rank-batch=0",)
