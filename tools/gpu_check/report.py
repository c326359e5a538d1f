"""The gpu-check report: the goals evaluated as ratios of one run, the printed table and summary, the JSON.

Goals (issue #19), all at batch 32 and from the same run:
- I/O binding >= 3x the tokens/s of the same CUDA session fed numpy arrays;
- ORT CUDA (with binding, the served path) >= PyTorch CUDA `generate` on the same weights;
- ORT CUDA >= 20x ORT CPU int8.
A goal whose arms did not both run is "not measured", with the reason; never met.

Nothing here measures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.gpu_check.arms import Arm

GOAL_BATCH = 32
GOALS = (
    # (name, numerator arm, denominator arm, at least)
    ("io_binding_vs_no_binding", "ort-cuda-binding", "ort-cuda-no-binding", 3.0),
    ("ort_cuda_vs_pytorch_generate", "ort-cuda-binding", "pytorch-cuda-generate", 1.0),
    ("ort_cuda_vs_cpu_int8", "ort-cuda-binding", "ort-cpu-int8", 20.0),
)


def goals(arms: Sequence[Arm], batch: int = GOAL_BATCH) -> list[dict[str, Any]]:
    by = {a.name: a for a in arms}
    out = []
    for name, num, den, target in GOALS:
        row: dict[str, Any] = {"goal": name, "ratio_of": f"{num} / {den} tokens/s at batch {batch}"}
        row["target"] = target
        missing = []
        for arm_name in (num, den):
            a = by.get(arm_name)
            if a is None or a.skipped or a.at(batch) is None:
                why = "not run" if a is None else a.skipped or f"no batch {batch} point"
                missing.append(f"{arm_name}: {why}")
        if missing:
            row.update(value=None, met=None, not_measured="; ".join(missing))
        else:
            n, d = by[num].at(batch), by[den].at(batch)
            assert n is not None and d is not None
            ratio = n.tokens_per_s / d.tokens_per_s
            row.update(value=round(ratio, 2), met=ratio >= target)
        out.append(row)
    return out


def table(arms: Sequence[Arm], batches: Sequence[int]) -> str:
    head = f"{'arm':<26}" + "".join(f"{'B=' + str(b) + ' tok/s':>14}{'TTFT ms':>9}" for b in batches)
    lines = [head, "-" * len(head)]
    for a in arms:
        if a.skipped:
            lines.append(f"{a.name:<26}skipped: {a.skipped}")
            continue
        cells = ""
        for b in batches:
            p = a.at(b)
            cells += f"{p.tokens_per_s:>14.1f}{p.ttft_s * 1000:>9.1f}" if p else f"{'-':>14}{'-':>9}"
        lines.append(f"{a.name:<26}{cells}")
    return "\n".join(lines)


def goals_text(rows: Sequence[dict[str, Any]]) -> str:
    lines = []
    for g in rows:
        if g["met"] is None:
            lines.append(f"  {g['goal']:<30} not measured ({g['not_measured']})")
        else:
            verdict = "MET" if g["met"] else "NOT MET"
            lines.append(f"  {g['goal']:<30} {g['value']:.2f}x (goal >= {g['target']:g}x): {verdict}")
    return "\n".join(lines)


def summary(doc: dict[str, Any], arms: Sequence[Arm], batches: Sequence[int], host: str) -> str:
    """The printed end of a run: the table, the checks, the load test, FAISS, the goals."""
    gpu = (doc.get("gpu") or {}).get("name") or "no GPU"
    out = [f"\ngpu-check on {gpu} ({host}), {doc['new_tokens']} new tokens per request, fp32 unless named"]
    out.append(table(arms, batches))
    if "equality" in doc:
        eq = doc["equality"]
        if "skipped" in eq:
            out.append(f"\nCUDA vs CPU greedy tokens: skipped ({eq['skipped']})")
        else:
            verdict = "ok" if eq["ok"] else "FAILED"
            out.append(
                f"\nCUDA vs CPU greedy tokens: {eq['agreeing_tokens']}/{eq['total_tokens']} agree, {verdict}"
            )
    if lt := doc.get("loadtest"):
        if "skipped" in lt:
            out.append(f"load test: skipped ({lt['skipped']})")
        else:
            lat = lt.get("latency_ms") or {}
            out.append(
                f"load test ({lt['device']}): {lt['throughput_ok_per_s']:.1f} OK/s, "
                f"p50 {lat.get('p50', 0):.1f} ms, "
                f"p99 {lat.get('p99', 0):.1f} ms, statuses {lt['status_counts']}"
            )
    if fa := doc.get("faiss"):
        out.append(
            f"faiss: {fa['rows']}" + (f" (GPU skipped: {fa['gpu_skipped']})" if fa["gpu_skipped"] else "")
        )
    out.append("goals (batch 32, this run):")
    out.append(goals_text(doc["goals"]))
    out += [f"FAILED {f}" for f in doc.get("failures", [])]
    return "\n".join(out)


def write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)
