"""The bench's verdict: each measured number over its same-run baseline, with the goal, as rows
and as a Markdown table. Reads the JSON document only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def get(d: Any, *path: Any) -> Any:
    """d[p0][p1]... or None where a key or index is missing."""
    for p in path:
        try:
            d = d[p]
        except (KeyError, IndexError, TypeError):
            return None
    return d


def ratios(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The table of ratios: each measured number over its same-run baseline, with the goal."""
    rows: list[dict[str, Any]] = []

    def add(metric: str, value: Any, baseline: Any, goal: str, ok: Callable[[float], bool] | None) -> None:
        ratio = round(value / baseline, 2) if value is not None and baseline else None
        rows.append(
            {
                "metric": metric,
                "value": value,
                "baseline": baseline,
                "ratio": ratio,
                "goal": goal,
                "met": None if ratio is None or ok is None else bool(ok(ratio)),
            }
        )

    gen = {g["concurrency"]: g for g in get(doc, "server", "generation") or []}
    torch_tps = get(doc, "baselines", "pytorch", "text_tokens_per_s")
    ort_tps = get(doc, "baselines", "onnx_alone", "text_tokens_per_s")
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
