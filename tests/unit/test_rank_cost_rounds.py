"""The rank phase's rounds (tools/bench/rank_cost.py): per-round ratios against the same round's
echo figures, medians over rounds, the order turned each round, and the verdict rows reading the
median of the per-round ratios (tools/bench/summary.py). Pure functions on made-up rounds."""

from __future__ import annotations

from tools.bench.plan import Plan
from tools.bench.rank_cost import Variant, aggregate, ratio_table, rotated, round_ratios
from tools.bench.summary import ratios


def load(rate: float, gw: float, w0: float) -> dict:
    cpu = {"gateway": gw, "worker0": w0}
    return {
        "answers_per_s": rate,
        "p50_ms": 4.0,
        "cpu_us_per_answer": cpu,
        "cpu_us_per_answer_total": gw + w0,
    }


def echo(cpu: float, rate: float, p50: float) -> dict:
    return {
        "answers_per_s": rate,
        "cpu_us_per_answer_total": cpu,
        "p50_ms_one_caller": p50,
        "batch64_answers_per_s": 10 * rate,
    }


# Three rounds on a machine whose load moves: round 2 is slow on both sides (echo and recgen).
ECHOS = [echo(100.0, 2000.0, 0.5), echo(200.0, 1000.0, 1.0), echo(110.0, 1900.0, 0.5)]
ROUNDS = [
    {
        "cold": load(800, 200, 50),
        "history": load(700, 250, 50),
        "p50_ms_one_caller": 1.8,
        "batch64": load(5000, 9, 1),
    },
    {
        "cold": load(400, 400, 100),
        "history": load(350, 500, 100),
        "p50_ms_one_caller": 2.4,
        "batch64": load(2500, 18, 2),
    },
    {
        "cold": load(760, 220, 55),
        "history": load(660, 270, 60),
        "p50_ms_one_caller": 2.0,
        "batch64": load(4600, 9, 1),
    },
]


def aggregated() -> dict:
    rounds = []
    for r, e in zip(ROUNDS, ECHOS, strict=True):
        rounds.append({**r, "ratios": round_ratios(r, e)})
    return aggregate(rounds)


def test_each_ratio_is_taken_within_its_round_and_the_figures_are_medians() -> None:
    v = aggregated()
    per = [r["ratios"]["cold_cpu_vs_echo"] for r in v["rounds"]]
    assert per == [2.5, 2.5, 2.5]  # the slow round is as slow on both sides: no outlier ratio
    assert v["ratios"]["cold_cpu_vs_echo"] == 2.5 == v["cold"]["ratio_cpu_vs_echo"]
    assert v["ratios"]["history_cpu_vs_echo"] == 3.0
    assert v["cold"]["cpu_us_per_answer_total"] == 275.0
    assert v["cold"]["cpu_us_per_answer"] == {"gateway": 220.0, "worker0": 55.0}
    assert v["history"]["answers_per_s"] == 660.0
    assert v["p50_ms_one_caller"] == 2.0
    # 1.8 / (2 x 0.5 + 1), 2.4 / (2 x 1.0 + 1), 2.0 / 2: 0.9, 0.8, 1.0; the medians alone say 1.0.
    assert [r["ratios"]["p50_vs_2x_echo_plus_1ms"] for r in v["rounds"]] == [0.9, 0.8, 1.0]
    assert v["ratios"]["p50_vs_2x_echo_plus_1ms"] == 0.9
    assert v["ratios"]["batch64_vs_history_rate"] == round(5000 / 700, 3)
    assert len(v["rounds"]) == 3 and v["batch64"]["answers_per_s"] == 4600.0


def test_the_order_of_variants_turns_each_round() -> None:
    vs = [Variant("a"), Variant("b"), Variant("c")]
    assert [[v.name for v in rotated(vs, r)] for r in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_the_verdict_reads_the_median_of_the_per_round_ratios() -> None:
    v = aggregated()
    e = {k: sorted(x[k] for x in ECHOS)[1] for k in ECHOS[0]}
    doc = {"rank": {"concurrency": 8, "echo": e, "variants": {"recgen": v}}}
    rows = {r["metric"]: r for r in ratios(doc)}
    cold = rows["server CPU-µs per Recommend (cold users, recgen) vs the empty server's per call"]
    assert (
        cold["value"] == 275.0 and cold["baseline"] == 110.0 and cold["ratio"] == 2.5 and cold["met"] is True
    )
    p50 = rows["Recommend p50 at one caller (recgen) vs 2 x echo p50 + 1 ms"]
    # The medians alone: 2.0 ms over 2 x 0.5 + 1 = 1.0x; the median of the rounds' own ratios: 0.9x.
    assert p50["value"] == 2.0 and p50["baseline"] == 2.0 and p50["ratio"] == 0.9 and p50["met"] is True
    table = ratio_table({"rounds": 3, "variants": {"recgen": v}})
    assert "| recgen | 2.50x (2.50-2.50) | 3.00x (3.00-3.00) |" in table


def test_plan_rounds() -> None:
    assert Plan.make(False, 2, 2).rank_rounds == 3
    assert Plan.make(True, 2, 2).rank_rounds == 2
    assert Plan.make(False, 2, 2, smoke=True).rank_rounds == 1
