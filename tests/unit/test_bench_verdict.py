"""The bench's verdict on its own table (tools/bench/summary.py `uncomputed`, tools/bench/runner.py):
a ratio that should have a value and is None or NaN fails the run in every mode, a skipped phase
excuses its ratios, and a --smoke run judges no goal. No measuring: documents built here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.bench.plan import Plan
from tools.bench.runner import main
from tools.bench.summary import ratios, uncomputed


def doc(mode: str = "full", *, echo_saturation: float = 900.0, rank_p50: float = 0.8) -> dict[str, Any]:
    gen = [
        {
            "concurrency": c,
            "tokens_per_s": 100.0 * c,
            "decoded_tokens_per_cpu_s": 50.0 * c,
            "first_generated_ms": {"p50": 10.0 * c, "p99": 20.0 * c},
        }
        for c in (1, 32)
    ]
    half = {"p50_ms": 2.0, "p99_ms": 9.0}
    run = {"answers_per_s": 800.0, "cpu_us_per_answer_total": 600.0}
    return {
        "mode": mode,
        "phase_seconds": {"server": 1.0, "rank": 1.0, "baselines": 1.0, "retrieval": 1.0},
        "server": {
            "generation": gen,
            "recommend": {
                "recgen": {"saturation_per_s": 300.0, "half_load": half},
                "echo": {"saturation_per_s": echo_saturation, "half_load": half},
                "ratio_saturation": 0.33,
            },
        },
        "baselines": {
            "pytorch": {"text_tokens_per_s": 20.0, "tokens_per_cpu_s": 10.0},
            "onnx_alone": {"text_tokens_per_s": 200.0, "tokens_per_cpu_s": 100.0},
        },
        "rank": {
            "concurrency": 8,
            "echo": {
                "answers_per_s": 2000.0,
                "cpu_us_per_answer_total": 200.0,
                "p50_ms_one_caller": rank_p50,
                "batch64_answers_per_s": 40000.0,
            },
            "variants": {
                "recgen": {"cold": run, "history": run, "p50_ms_one_caller": 2.0, "batch64": run},
            },
        },
        "retrieval": {
            "rows": [
                {
                    "name": "20K",
                    "items": 20_000,
                    "index": "flat",
                    "recall_at_100": 1.0,
                    "index_qps_batch1": 5.0,
                    "exact_qps_batch1": 5.0,
                    "index_qps_batched": 9.0,
                    "exact_qps_batched": 9.0,
                }
            ]
        },
    }


def with_ratios(d: dict[str, Any]) -> dict[str, Any]:
    d["ratios"] = ratios(d)
    return d


def test_a_complete_table_has_nothing_uncomputed_and_smoke_judges_no_goal() -> None:
    full = with_ratios(doc())
    assert uncomputed(full) == []
    assert any(r["met"] is False for r in full["ratios"])  # the full run judges goals
    smoke = with_ratios(doc("smoke"))
    assert uncomputed(smoke) == []
    assert all(r["met"] is None for r in smoke["ratios"])
    assert [r["ratio"] for r in smoke["ratios"]] == [r["ratio"] for r in full["ratios"]]


def test_a_zero_baseline_and_a_nan_value_are_uncomputed() -> None:
    d = with_ratios(doc(echo_saturation=0.0, rank_p50=float("nan")))
    bad = uncomputed(d)
    assert len(bad) == 2, bad
    assert bad[0].startswith("Recommend saturation (ok/s) vs echo server: ratio None")
    assert bad[1].startswith("Recommend p50 at one caller (recgen) vs 2 x echo p50 + 1 ms: ratio nan")


def test_a_skipped_phase_excuses_its_ratios_and_a_silent_phase_is_flagged() -> None:
    d = doc()
    del d["baselines"], d["phase_seconds"]["baselines"]
    assert uncomputed(with_ratios(d)) == []  # the generation rows that need baselines are excused
    d = doc()
    del d["rank"]  # ran (phase_seconds has it) but left nothing
    assert uncomputed(with_ratios(d)) == ["phase rank ran but gave no ratio"]


def test_from_json_exits_nonzero_on_an_uncomputed_ratio(tmp_path: Path) -> None:
    src = tmp_path / "in.json"
    src.write_text(json.dumps(doc(echo_saturation=0.0)))
    assert main(["--from-json", str(src), "--out", str(tmp_path / "bad")]) == 1
    out = json.loads((tmp_path / "bad" / "bench.json").read_text())
    assert len(out["uncomputed"]) == 1 and (tmp_path / "bad" / "bench_table.md").is_file()
    src.write_text(json.dumps(doc("smoke")))
    assert main(["--from-json", str(src), "--out", str(tmp_path / "good")]) == 0


def test_smoke_plan_keeps_what_every_ratio_needs() -> None:
    p = Plan.make(False, 2, 2, smoke=True)
    assert p.mode == "smoke" and {1, 32} <= set(p.gen_levels)  # first-text ratios compare 1 and 32
    assert len(p.gen_levels) == len(p.gen_duration) == len(p.gen_warmup)
    assert 2 <= p.torch_prompts <= p.ort_prompts <= p.gen_users
    assert Plan.make(True, 2, 2).mode == "quick" and Plan.make(False, 2, 2).mode == "full"
