"""The growth phase of `python -m tools.bench` (tools/bench/growth.py `measure`, run by
tools/bench/runner.py): its goals become rows of the verdict table, judged on the document's
exponents (tools/bench/summary.py), an older bench JSON without growth still redoes its table, and
a --smoke run of the growth phase alone measures every exponent through real `recgen serve`s.
No speed is judged: the numbers live in docs/growth.md."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_bench_verdict import doc as bench_doc
from tools.bench.growth import ABSOLUTE, FLAT, FULL, NON_RETRIEVAL, QUICK, SERVED, SMOKE, growth, ratios
from tools.bench.plan import Plan
from tools.bench.runner import main
from tools.bench.summary import growth_rows, markdown, uncomputed
from tools.bench.summary import ratios as table

ROOT = Path(__file__).resolve().parents[2]


def point(users: int, items: int, scale: dict[str, float], ref: dict[str, Any] | None) -> dict[str, Any]:
    """One measured size as growth.measure_point writes it: each figure of a 1K x 1K version
    (cold/held p50 3 ms, retrieval 0.05 ms ...) times scale[figure] (default 1), two chunks a phase."""
    row: dict[str, Any] = {"users": users, "items": items, "index": "flat"}
    for phase in ("cold_c1", "held_c1", "cold_cN", "held_cN"):
        p50 = 3.0 * scale.get(f"{phase}.p50", 1.0)
        row[phase] = {
            "p50": p50,
            "p99": 3 * p50,
            "cpu_us_per_call": 2000.0 * scale.get(f"{phase}.cpu_us_per_call", 1.0),
            "chunk_p50_ms": [p50, p50],
            "errors": {},
        }
    for f in ABSOLUTE:
        top, _, stat = f.partition(".")
        v = (0.05 if top == "retrieval_ms" else 100.0) * scale.get(f, 1.0)
        if stat:
            row.setdefault(top, {})[stat] = v
        else:
            row[top] = v
    if ref is not None:
        row["ref"] = {k: ref[k] for k in ("cold_c1", "held_c1", "cold_cN", "held_cN")}
    return row


def growth_doc(items_scale: dict[str, float], failed: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A growth document (the shape `python -m tools.bench.growth --json` writes) whose users series
    is flat and whose items series grows by `items_scale` from 1K to 100K items; exponents and
    ratios by growth.py's own functions."""
    out: dict[str, Any] = {"command": "python -m tools.bench.growth (test)", "flat_exponent": FLAT}
    for name, small, large in (
        ("users", (1_000, 10_000), (100_000, 10_000)),
        ("items", (10_000, 1_000), (10_000, 100_000)),
    ):
        ref = point(*small, {}, None)
        rows = [ref, point(*large, items_scale if name == "items" else {}, ref)]
        out[f"{name}_series"] = {
            "rows": rows,
            "ratios": ratios(rows),
            "exponents": growth(rows, name),
            "failed": failed if name == "items" and failed else [],
        }
    return out


def with_growth(g: dict[str, Any] | None, mode: str = "full") -> dict[str, Any]:
    d = bench_doc(mode)
    d["phase_seconds"]["growth"] = 1.0
    if g is not None:
        d["growth"] = g
    d["ratios"] = table(d)
    return d


def test_growth_goals_are_rows_judged_on_the_documents_exponents() -> None:
    # Cold latency 10x over 100x the catalog: exponent 0.5, the cold path's goal missed; the rest flat.
    g = growth_doc({"cold_c1.p50": 10.0, "retrieval_ms.p50": 10.0})
    rows = growth_rows(g)
    goal_rows = [r for r in rows if r["goal"]]
    assert len(goal_rows) == 4 and len(rows) == 4 + 3
    assert all(r["kind"] == "exponent" and r["needs"] == ["growth"] for r in rows)
    by = {r["metric"]: r for r in goal_rows}
    cold_items = next(r for m, r in by.items() if "cold Recommend p50 (no retrieval) flat in items" in m)
    assert cold_items["ratio"] == pytest.approx(0.5)
    assert cold_items["met"] is False and "O(items)" in cold_items["reason"]
    assert (cold_items["value"], cold_items["baseline"]) == (30.0, 3.0)  # largest vs the reference alongside
    assert "(1,000 -> 100,000 items, 10,000 users)" in cold_items["metric"]
    held_users = next(r for m, r in by.items() if "users with history, 1 caller) flat in users" in m)
    assert held_users["ratio"] == pytest.approx(0.0) and held_users["met"] is True
    # Held p50 flat while retrieval-only p50 grows 10x: held p50 less retrieval, 2.95 -> 2.5 ms,
    # judged on growth's own NON_RETRIEVAL exponent (its chunks' median ratio), ~ -0.036: flat.
    non_retrieval = next(r for m, r in by.items() if "less retrieval-only" in m)
    assert non_retrieval["ratio"] == g["items_series"]["exponents"][NON_RETRIEVAL] == pytest.approx(-0.036)
    assert (non_retrieval["value"], non_retrieval["baseline"], non_retrieval["met"]) == (2.5, 2.95, True)
    retrieval = next(r for r in rows if "retrieval-only p50 (ms)" in r["metric"])
    assert retrieval["ratio"] == pytest.approx(0.5) and retrieval["met"] is None  # info: no goal

    d = with_growth(g)
    assert d["ratios"][-7:] == rows  # after the other phases' rows
    assert uncomputed(d) == []
    md = markdown(d)
    assert "exponent +0.500 | exponent within ±0.05 | **no** (the cold path does O(items) work" in md
    assert "exponent +0.000 | exponent within ±0.05 | yes |" in md


def test_smoke_judges_no_growth_goal_and_an_uncomputed_exponent_fails_the_run() -> None:
    g = growth_doc({"cold_c1.p50": 10.0})
    smoke = with_growth(g, "smoke")
    assert all(r["met"] is None and not r.get("reason") for r in smoke["ratios"])
    assert uncomputed(smoke) == []
    # A size that failed: its series has one point, no exponent; the run says so twice over.
    g = growth_doc({}, failed=[{"users": 10_000, "items": 100_000, "error": "serve did not start"}])
    g["items_series"]["rows"] = g["items_series"]["rows"][:1]
    g["items_series"]["exponents"] = growth(g["items_series"]["rows"], "items")
    bad = uncomputed(with_growth(g))
    assert any(line.startswith("growth exponent: Catalog cost only in retrieval") for line in bad), bad
    assert bad[-1] == "growth: 10,000 users x 100,000 items failed: serve did not start"
    # The phase ran and left no document (it raised): flagged like any other silent phase.
    assert uncomputed(with_growth(None)) == ["phase growth ran but gave no ratio"]


def test_from_json_redoes_the_table_with_and_without_a_growth_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps(bench_doc()))  # a bench.json from before the growth phase
    assert main(["--from-json", str(old), "--out", str(tmp_path / "old")]) == 0
    out = json.loads((tmp_path / "old" / "bench.json").read_text())
    assert "growth" not in out and not any(r.get("kind") == "exponent" for r in out["ratios"])
    assert "growth exponents" not in capsys.readouterr().out
    new = bench_doc()
    new["phase_seconds"]["growth"], new["growth"] = 1.0, growth_doc({"cold_c1.p50": 10.0})
    (tmp_path / "new.json").write_text(json.dumps(new))
    assert main(["--from-json", str(tmp_path / "new.json"), "--out", str(tmp_path / "new")]) == 0
    printed = capsys.readouterr().out
    assert "growth exponents" in printed and "MISSED Catalog cost only in retrieval: cold" in printed
    assert "exponent +0.500 the cold path does O(items) work" in printed
    table_md = (tmp_path / "new" / "bench_table.md").read_text()
    assert table_md.count("growth exponent:") == 7


def test_plan_sizes_the_growth_phase() -> None:
    assert Plan.make(False, 2, 2).growth == FULL  # the growth tool's own full run
    quick, smoke = Plan.make(True, 2, 2).growth, Plan.make(False, 2, 2, smoke=True).growth
    assert smoke == SMOKE and QUICK != quick
    for s in (FULL, quick, smoke):
        assert len(s.users) >= 2 and len(s.items) >= 2  # an exponent is a slope
    assert max(smoke.users + smoke.items) <= max(quick.users + quick.items) <= max(FULL.users + FULL.items)
    assert smoke.calls <= quick.calls <= FULL.calls
    assert SMOKE.argv()[:4] == ["--users", "300,1000", "--items", "300,1000"]
    assert set(SERVED) >= {"held_c1.p50", "cold_c1.p50"}


@pytest.mark.e2e
def test_smoke_bench_growth_phase_alone(tmp_path: Path) -> None:
    """`python -m tools.bench --smoke` with only its growth phase: three real `recgen serve`s over
    synthetic versions; the bench JSON holds growth's own document; every exponent is computed."""
    p = subprocess.run(
        [sys.executable, "-m", "tools.bench", "--smoke", "--skip", "server,rank,baselines,retrieval"]
        + ["--out", str(tmp_path / "bench")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    d = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert set(d["phase_seconds"]) == {"growth"} and d["uncomputed"] == [] and not d["errors"]
    g = d["growth"]
    assert {"users_series", "items_series", "goals", "command", "sizes"} <= set(g)
    assert g["command"].startswith("python -m tools.bench.growth --users 300,1000 --items 300,1000")
    assert [r["users"] for r in g["users_series"]["rows"]] == [300, 1000]
    assert d["plan"]["growth"]["items"] == [300, 1000]
    rows = [r for r in d["ratios"] if r.get("kind") == "exponent"]
    assert len(rows) == 7 and all(math.isfinite(r["ratio"]) and r["met"] is None for r in rows)
    assert "growth exponents (python -m tools.bench.growth" in p.stdout
