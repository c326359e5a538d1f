"""The text evaluation's table, goals and docs/text.md, from the result `run.evaluate` returns.

Formatting only: nothing is measured or recomputed here.
"""

from __future__ import annotations

from typing import Any

from tools.text_eval.arms import DEFAULT_ARM

# (metric, comparison, target, as the issue states it)
GOALS: tuple[tuple[str, str, float, str], ...] = (
    ("grounded", ">=", 1.0, "100% grounded"),
    ("complete", ">=", 0.95, ">= 95% COMPLETE"),
    ("names_recommended", ">=", 0.90, ">= 90% name a recommended item"),
    ("links", ">=", 0.80, ">= 80% link it to the history or intent"),
    ("leak_texts", "<=", 0, "0 instruction leaks"),
    ("attribute_violations", "<=", 0.05, "<= 5% attribute violations"),
)

COLUMNS = (
    "arm",
    "precision",
    "COMPLETE",
    "grounded",
    "names rec",
    "links",
    "attr viol",
    "leaks",
    "distinct-2",
    "words",
    "tok/s c1",
    "tok/s cN",
    "TTFT p50/p99 ms cN",
    "ms/token p50 cN",
    "first text p50/p99 ms cN",
)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _cells(row: dict[str, Any], concurrency: int) -> list[str]:
    s1, sn = row["speed"]["c1"], row["speed"][f"c{concurrency}"]
    t = sn["ttft_ms"] or {}
    return [
        row["arm"],
        row["precision"],
        _pct(row["complete"]),
        _pct(row["grounded"]),
        _pct(row["names_recommended"]),
        _pct(row["links"]),
        _pct(row["attribute_violations"]),
        str(row["leak_texts"]),
        f"{row['distinct_2']:.2f}",
        f"{row['mean_words']:.1f}",
        f"{s1['tokens_per_s']:.1f}",
        f"{sn['tokens_per_s']:.1f}",
        f"{t.get('p50', '-'):.0f}/{t.get('p99', '-'):.0f}" if t else "-",
        f"{tok['p50']:.1f}" if (tok := sn.get("token_ms") or {}) else "-",
        f"{ft['p50']:.0f}/{ft['p99']:.0f}" if (ft := sn.get("first_text_ms") or {}) else "-",
    ]


def table(result: dict[str, Any]) -> str:
    """The plain-text table the command prints."""
    n = result["config"]["concurrency"]
    head = [c.replace("cN", f"c{n}") for c in COLUMNS]
    body = [_cells(r, n) for r in result["rows"]]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [head, *body])


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal against the default arm (every precision measured)."""
    out = []
    for row in result["rows"]:
        if row["arm"] != DEFAULT_ARM:
            continue
        for metric, op, target, text in GOALS:
            value = row[metric]
            met = value >= target if op == ">=" else value <= target
            out.append(
                {"arm": row["arm"], "precision": row["precision"], "goal": text, "value": value, "met": met}
            )
    return out


def _value(metric_value: float, goal: str) -> str:
    return str(metric_value) if "leaks" in goal else _pct(metric_value)


def _samples(row: dict[str, Any]) -> list[str]:
    lines = [f"### Samples: {row['arm']} ({row['precision']})", ""]
    for s in row["samples"]:
        f = s["flags"]
        marks = [k for k in ("grounded", "names_recommended", "links") if f[k]]
        if f["leaks"]:
            marks.append(f"**leak**: {', '.join(f['leaks'])}")
        if f["attribute_violations"]:
            marks.append(f"**attribute**: {'; '.join(f['attribute_violations'])}")
        intent = f'; intent "{s["intent"]}"' if s["intent"] else ""
        lines.append(
            f"- **{s['case']}** ({s['locale']}{intent}); liked: {', '.join(s['history'])}; "
            f"recommended: {', '.join(s['recommended'])}"
        )
        lines.append(f"  > {s['text'].strip() or '(empty)'}")
        flags = ", ".join(marks) or "not grounded, names no recommended item"
        why = f" ({s['reason']})" if s.get("reason") else ""
        lines.append(f"  `{s['stop_reason']}`{why}; {flags}")
    return lines + [""]


def _exactness(ex: dict[str, Any] | None) -> list[str]:
    """The int8 exactness section (tools/text_eval/exactness.py), when it was measured."""
    if not ex:
        return []
    lines = [
        "",
        f"## Exactness ({ex['precision']})",
        "",
        "`--exactness` (tools/text_eval/exactness.py): the default arm's prompts decoded greedily "
        f"without the title constraint, at most {ex['max_new_tokens']} tokens, by the engine with "
        f"the worker's cached prompt head ({ex['cached_prefix_tokens']} tokens) and without any "
        "cache, one request at a time (@1) and all at once (@n), against the unbatched no-cache "
        f"reference (`generate_alone`, the ONNX baseline's loop); {ex['seconds']:.0f} s, load "
        f"average {ex['loadavg'][0]} -> {ex['loadavg'][1]}.",
        "",
        "| engine | identical | first token equal | mean common prefix (tokens) |",
        "|---|---:|---:|---:|",
    ]
    for way, a in ex["ways"].items():
        lines.append(
            f"| {way} | {a['identical']}/{a['n']} | {a['first_token_equal']}/{a['n']} | "
            f"{a['mean_common_prefix']} |"
        )
    return lines + [
        "",
        "The uncached @1 row's common prefix is the reference's mean length. Dynamic int8 "
        "quantization scales each call's activations by their range, so the rows a call batches "
        "(padding, other prompts) and a prefix computed in another call both can change a token: "
        "the served engine, which batches, was never exact against the unbatched loop, and the "
        "cached head does not change how often it differs at batch. The quality goals are judged "
        "on the served texts (the table above); the ONNX baseline keeps its whole-prompt loop.",
    ]


def markdown(result: dict[str, Any], command: str) -> str:
    n = result["config"]["concurrency"]
    head = [c.replace("cN", f"c{n}") for c in COLUMNS]
    lines = [
        "# Explanation text quality (`make text-eval`)",
        "",
        f"Produced by `{command}` ({result['seconds']:.0f} s, {result['cases']} cases from "
        "tools/text_eval/cases.jsonl). Model version "
        f"`{result['version']}`, LLM `{result['llm_source']}`. The metrics are defined in "
        "tools/text_eval/__init__.py; leaks and attribute claims are judged by "
        f"{result['claims_source']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(_cells(r, n)) + " |" for r in result["rows"]),
        "",
        f"Speed: in process on the version's Generator, greedy, at most {result['config']['max_new_tokens']} "
        f"new tokens; c1 = one client over the first {result['config']['c1_requests']} cases, "
        f"c{n} = {n} closed-loop clients over every case (the scored texts); TTFT is the engine's "
        f"submit-to-first-token time, {result['config']['threads']} ORT threads; load average "
        f"{result['loadavg'][0]} -> {result['loadavg'][1]} on {result['cpus']} CPUs during the run.",
        "",
        "## Arms",
        "",
    ]
    for r in result["rows"]:
        cfg = ", ".join(f"{k}={v}" for k, v in r["config"].items())
        lines.append(f"- **{r['arm']}** ({r['description']}): {cfg}; stop reasons {r['stop_reasons']}")
    lines += ["", "## Goals (default arm)", ""]
    for g in goals(result):
        lines.append(
            f"- {'met' if g['met'] else '**missed**'}: {g['goal']}: {_value(g['value'], g['goal'])} "
            f"({g['arm']}, {g['precision']})"
        )
    lines += ["", "## Notes", "", f"- Precision: {result['precision_note']}."]
    tokens = [(r["arm"], r["prompt_tokens"]) for r in result["rows"] if r.get("prompt_tokens")]
    if tokens:
        lines.append(
            "- Prompt tokens per text, mean (of them fed by the prefill, after the Generator's cached "
            "prefix when the prompt starts with it): "
            + "; ".join(f"{a} {t['mean']} ({t['mean_fed']} fed)" for a, t in tokens)
            + f"; cached prefix {tokens[0][1]['cached_prefix']} tokens."
        )
    probe = result.get("export_probe")
    if probe:
        lines.append(f"- The export's own probe (llm.json quality): {probe}.")
    lines += _exactness(result.get("exactness"))
    lines += ["", "## Sample texts", ""]
    for r in result["rows"]:
        lines += _samples(r)
    return "\n".join(lines).rstrip() + "\n"
