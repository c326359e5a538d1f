"""The bench's verdict: each measured number over its same-run baseline, with the goal, as rows
and as a Markdown table, and which ratios a run failed to compute. Reads the JSON document only."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

PHASES = ("server", "rank", "baselines", "retrieval")


def get(d: Any, *path: Any) -> Any:
    """d[p0][p1]... or None where a key or index is missing."""
    for p in path:
        try:
            d = d[p]
        except (KeyError, IndexError, TypeError):
            return None
    return d


def ratios(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The table of ratios: each measured number over its same-run baseline, with the goal (not
    judged in a --smoke run: its loads last seconds). Each row names the phases it needs."""
    rows: list[dict[str, Any]] = []
    judge = doc.get("mode") != "smoke"
    needs: tuple[str, ...] = ()

    def add(metric: str, value: Any, baseline: Any, goal: str, ok: Callable[[float], bool] | None) -> None:
        ratio = round(value / baseline, 2) if value is not None and baseline else None
        rows.append(
            {
                "metric": metric,
                "value": value,
                "baseline": baseline,
                "ratio": ratio,
                "goal": goal,
                "met": None if ratio is None or ok is None or not judge else bool(ok(ratio)),
                "needs": list(needs),
            }
        )

    gen = {g["concurrency"]: g for g in get(doc, "server", "generation") or []}
    torch_tps = get(doc, "baselines", "pytorch", "text_tokens_per_s")
    ort_tps = get(doc, "baselines", "onnx_alone", "text_tokens_per_s")
    needs = ("server", "baselines")
    for c, g in sorted(gen.items()):
        add(
            f"gen tokens/s @{c} vs PyTorch generate fp32 serial",
            g["tokens_per_s"],
            torch_tps,
            ">= 6x at 32" if c == 32 else "",
            (lambda r: r >= 6.0) if c == 32 else None,
        )
        add(
            f"gen tokens/s @{c} vs ONNX int8 unbatched serial",
            g["tokens_per_s"],
            ort_tps,
            ">= 3x at 32" if c == 32 else "",
            (lambda r: r >= 3.0) if c == 32 else None,
        )
    top = gen.get(max(gen)) if gen else None
    for key, label in (("pytorch", "PyTorch fp32"), ("onnx_alone", "ONNX int8 unbatched")):
        base = get(doc, "baselines", key, "tokens_per_cpu_s")
        if top and base:
            add(
                f"gen tokens per CPU-second @{top['concurrency']} vs {label} (info: robust to other jobs)",
                top.get("decoded_tokens_per_cpu_s"),
                base,
                "",
                None,
            )
    needs = ("server",)
    if 1 in gen and 32 in gen:
        for q in ("p50", "p99"):
            a = get(gen[32], "first_generated_ms", q)
            b = get(gen[1], "first_generated_ms", q)
            add(f"time to first model text {q} @32 vs @1 (ms)", a, b, "<= 5x", lambda r: r <= 5.0)
    rec = get(doc, "server", "recommend")
    if rec:
        add(
            "Recommend saturation (ok/s) vs echo server",
            rec["recgen"]["saturation_per_s"],
            rec["echo"]["saturation_per_s"],
            ">= 0.5x",
            lambda r: r >= 0.5,
        )
        add(
            "Recommend p50 at half load vs echo (ms)",
            rec["recgen"]["half_load"]["p50_ms"],
            rec["echo"]["half_load"]["p50_ms"],
            "",
            None,
        )
        add(
            "Recommend p99 at half load vs echo (ms)",
            rec["recgen"]["half_load"]["p99_ms"],
            rec["echo"]["half_load"]["p99_ms"],
            "",
            None,
        )
    needs = ("rank",)
    rank = get(doc, "rank")
    echo = get(rank, "echo") or {}
    for name, v in (get(rank, "variants") or {}).items():
        for kind, label in (("cold", "cold users"), ("history", "users with history")):
            add(
                f"server CPU-µs per Recommend ({label}, {name}) vs the empty server's per call",
                get(v, kind, "cpu_us_per_answer_total"),
                echo.get("cpu_us_per_answer_total"),
                "<= 2.5x",
                lambda r: r <= 2.5,
            )
        add(
            f"Recommend calls/s @{rank['concurrency']} ({name}, users with history) vs echo server",
            get(v, "history", "answers_per_s"),
            echo.get("answers_per_s"),
            "",
            None,
        )
        p50 = echo.get("p50_ms_one_caller")
        add(
            f"Recommend p50 at one caller ({name}) vs 2 x echo p50 + 1 ms",
            get(v, "p50_ms_one_caller"),
            None if p50 is None else round(2.0 * p50 + 1.0, 3),
            "<= 1x",
            lambda r: r <= 1.0,
        )
        add(
            f"RecommendBatch(64) users/s ({name}) vs single-call Recommend calls/s",
            get(v, "batch64", "answers_per_s"),
            get(v, "history", "answers_per_s"),
            ">= 5x",
            lambda r: r >= 5.0,
        )
        add(
            f"RecommendBatch(64) users/s ({name}) vs the empty server's RecommendBatch(64)",
            get(v, "batch64", "answers_per_s"),
            echo.get("batch64_answers_per_s"),
            "",
            None,
        )
    needs = ("retrieval",)
    for row in get(doc, "retrieval", "rows") or []:
        if row.get("chosen_by_policy") is False:
            continue  # a reference measurement (HNSW where the policy picks exact), in the JSON only
        is_1m = row["items"] >= 1_000_000
        goal_ok = row["recall_at_100"] >= 0.95

        def five_times(r: float, g: bool = goal_ok) -> bool:
            return g and r >= 5.0

        for kind in ("batch1", "batched"):
            add(
                f"retrieval {row['name']} {row['index']} q/s ({kind}) vs exact; "
                f"recall@100 {row['recall_at_100']:.3f}",
                row[f"index_qps_{kind}"],
                row[f"exact_qps_{kind}"],
                ">= 5x with recall >= 0.95" if is_1m else "",
                five_times if is_1m else None,
            )
    return rows


def uncomputed(doc: dict[str, Any], rows: Iterable[dict[str, Any]] | None = None) -> list[str]:
    """What the run should have computed and did not: each ratio that is None or NaN although every
    phase it needs ran (a skipped phase excuses its ratios), and each phase that ran yet gave no
    ratio at all. Empty when the table is complete. Judges no goal."""
    ran = set(doc.get("phase_seconds") or {})
    rows = list((doc.get("ratios") or []) if rows is None else rows)
    out = []
    for r in rows:
        if not set(r.get("needs") or ()) <= ran:
            continue
        ratio = r["ratio"]
        if ratio is None or not math.isfinite(float(ratio)):
            out.append(f"{r['metric']}: ratio {ratio} (value {r['value']}, baseline {r['baseline']})")
    for phase in PHASES:
        if phase in ran and not any(phase in (r.get("needs") or ()) for r in rows):
            out.append(f"phase {phase} ran but gave no ratio")
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = ["| metric | recgen | baseline | ratio | goal | met |", "|---|---:|---:|---:|---|---|"]
    for r in doc.get("ratios", []):
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(
            f"| {r['metric']} | {_fmt(r['value'])} | {_fmt(r['baseline'])} | "
            f"{_fmt(r['ratio'])}{'x' if r['ratio'] is not None else ''} | {r['goal']} | {met} |"
        )
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)
