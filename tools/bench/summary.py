"""The bench's verdict: each measured number over its same-run baseline, with the goal, as rows
and as a Markdown table, and which ratios a run failed to compute. Reads the JSON document only.
The growth phase's rows carry a growth exponent (kind "exponent") where the others carry a ratio."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from tools.bench.growth import FLAT, NON_RETRIEVAL, failures, goals

PHASES = ("server", "rank", "baselines", "retrieval", "growth")


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

    def add(
        metric: str,
        value: Any,
        baseline: Any,
        goal: str,
        ok: Callable[[float], bool] | None,
        measured_ratio: Any = None,
    ) -> None:
        """measured_ratio: the run's own ratio where it has one (the rank phase's median over
        rounds of each round's ratio: both sides of a round see the same machine load), used
        instead of value / baseline (then the medians of each side)."""
        if measured_ratio is not None and value is not None:
            ratio = round(float(measured_ratio), 2)
        else:
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
                get(v, "ratios", f"{kind}_cpu_vs_echo"),
            )
        add(
            f"Recommend calls/s @{rank['concurrency']} ({name}, users with history) vs echo server",
            get(v, "history", "answers_per_s"),
            echo.get("answers_per_s"),
            "",
            None,
            get(v, "ratios", "history_rate_vs_echo"),
        )
        p50 = echo.get("p50_ms_one_caller")
        add(
            f"Recommend p50 at one caller ({name}) vs 2 x echo p50 + 1 ms",
            get(v, "p50_ms_one_caller"),
            None if p50 is None else round(2.0 * p50 + 1.0, 3),
            "<= 1x",
            lambda r: r <= 1.0,
            get(v, "ratios", "p50_vs_2x_echo_plus_1ms"),
        )
        add(
            f"RecommendBatch(64) users/s ({name}) vs single-call Recommend calls/s",
            get(v, "batch64", "answers_per_s"),
            get(v, "history", "answers_per_s"),
            ">= 5x",
            lambda r: r >= 5.0,
            get(v, "ratios", "batch64_vs_history_rate"),
        )
        add(
            f"RecommendBatch(64) users/s ({name}) vs the empty server's RecommendBatch(64)",
            get(v, "batch64", "answers_per_s"),
            echo.get("batch64_answers_per_s"),
            "",
            None,
            get(v, "ratios", "batch64_vs_echo_batch64"),
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
    rows += growth_rows(doc.get("growth"), judge)
    return rows


# Exponents shown beside the goals' (no goal of their own): what loading and holding a version costs
# as its users grow, and retrieval alone as the catalog grows.
GROWTH_INFO = (
    ("users", "load_s", "worker load time (s)"),
    ("users", "worker_rss_mib", "worker resident memory (MiB)"),
    ("items", "retrieval_ms.p50", "retrieval-only p50 (ms)"),
)


def growth_rows(g: dict[str, Any] | None, judge: bool = True) -> list[dict[str, Any]]:
    """The growth phase's rows (tools.bench.growth's document): each goal of `goals()`, re-judged
    on the document's exponents, and the GROWTH_INFO exponents. The "ratio" column holds the
    exponent (log-log slope over the series' sizes); value and baseline are the figure at the
    largest size and at the smallest (the reference, measured alongside where served)."""
    if not g:
        return []
    gu, gi = get(g, "users_series", "exponents") or {}, get(g, "items_series", "exponents") or {}
    rows = []
    for goal in goals(_DefaultNone(gu), _DefaultNone(gi)):
        e = goal["exponent"]
        value, baseline = _largest_vs_reference(g, goal["series"], goal["figure"])
        rows.append(
            {
                "metric": f"growth exponent: {goal['goal']} ({_span(g, goal['series'])})",
                "value": value,
                "baseline": baseline,
                "ratio": e,
                "goal": f"exponent within ±{FLAT}",  # no "|": a Markdown table cell
                "met": goal["met"] if judge and e is not None else None,
                "reason": goal["reason"] if judge and e is not None else "",
                "needs": ["growth"],
                "kind": "exponent",
            }
        )
    for series, figure, label in GROWTH_INFO:
        rs = get(g, f"{series}_series", "rows") or []
        rows.append(
            {
                "metric": f"growth exponent: {label} ({_span(g, series)}; info)",
                "value": _figure(rs[-1], figure) if rs else None,
                "baseline": _figure(rs[0], figure) if rs else None,
                "ratio": get(g, f"{series}_series", "exponents", figure),
                "goal": "",
                "met": None,
                "needs": ["growth"],
                "kind": "exponent",
            }
        )
    return rows


def growth_lines(doc: dict[str, Any]) -> list[str]:
    """The table's growth rows as lines to print at the end of a run: MET / MISSED (`-`: no goal, or
    a --smoke run), the exponent, why a goal was missed. Empty without a growth phase."""
    out = []
    for r in doc.get("ratios") or []:
        if r.get("kind") == "exponent":
            verdict = "-     " if r["met"] is None else "MET   " if r["met"] else "MISSED"
            e = "None" if r["ratio"] is None else f"{r['ratio']:+.3f}"
            what = r["metric"].removeprefix("growth exponent: ")
            out.append(f"{verdict} {what}: exponent {e} {r.get('reason', '')}".rstrip())
    return out


class _DefaultNone(dict[str, Any]):
    """An exponents dict where a missing figure reads None (uncomputed), not KeyError."""

    def __missing__(self, key: str) -> None:
        return None


def _figure(row: dict[str, Any], figure: str) -> Any:
    return get(row, *figure.split("."))


def _span(g: dict[str, Any], series: str) -> str:
    """'1,000 -> 1,000,000 users, 10,000 items' from the sizes the series measured."""
    rs = get(g, f"{series}_series", "rows") or []
    if not rs:
        return f"no {series} measured"
    fixed = "items" if series == "users" else "users"
    return f"{rs[0][series]:,} -> {rs[-1][series]:,} {series}, {rs[0][fixed]:,} {fixed}"


def _largest_vs_reference(g: dict[str, Any], series: str, figure: str) -> tuple[Any, Any]:
    """A goal's figure (ms) at the series' largest size and the reference's measured alongside it;
    NON_RETRIEVAL: held p50 less each version's retrieval-only p50."""
    rs = get(g, f"{series}_series", "rows") or []
    if len(rs) < 2:
        return None, None
    top, ref = rs[-1], rs[-1].get("ref") or {}
    if figure != NON_RETRIEVAL:
        return _figure(top, figure), _figure(ref, figure)
    a, b = get(top, "held_c1", "p50"), get(ref, "held_c1", "p50")
    ta, tb = get(top, "retrieval_ms", "p50"), get(rs[0], "retrieval_ms", "p50")
    if None in (a, b, ta, tb):
        return None, None
    return round(a - ta, 3), round(b - tb, 3)


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
    if "growth" in ran:  # a size that failed to build or serve: its series' exponent lacks a point
        for f in failures(doc.get("growth") or {}):
            why = " ".join(str(f["error"]).split())[:300]  # one line: the error may end in a log's tail
            out.append(f"growth: {f['users']:,} users x {f['items']:,} items failed: {why}")
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = ["| metric | recgen | baseline | ratio | goal | met |", "|---|---:|---:|---:|---|---|"]
    for r in doc.get("ratios", []):
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        if r["met"] is False and r.get("reason"):
            met += f" ({r['reason']})"
        if r.get("kind") == "exponent":  # a growth exponent, not a ratio: signed, no "x"
            ratio = "-" if r["ratio"] is None else f"exponent {r['ratio']:+.3f}"
        else:
            ratio = f"{_fmt(r['ratio'])}{'x' if r['ratio'] is not None else ''}"
        lines.append(
            f"| {r['metric']} | {_fmt(r['value'])} | {_fmt(r['baseline'])} | {ratio} | {r['goal']} | {met} |"
        )
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)
