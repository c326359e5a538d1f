"""The bench's PNG (matplotlib): generation, time to first text, Recommend vs echo, retrieval.
Reads the JSON document only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.bench.summary import get


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    m = doc.get("machine", {})
    kind = doc.get("mode") or ("quick" if doc.get("quick") else "full")
    gpu_note = get(doc, "gpu", "note") or "GPU present"
    fig.suptitle(
        f"recgen bench ({kind}) - {m.get('nproc')} cores {m.get('cpu_model')}, "
        f"load avg {get(doc, 'load', 'mean')} (mean); {gpu_note}",
        fontsize=10,
    )
    gen = get(doc, "server", "generation") or []
    ax = axes[0][0]
    if gen:
        cs = [g["concurrency"] for g in gen]
        ax.bar(
            range(len(cs)),
            [g["tokens_per_s"] for g in gen],
            color="tab:blue",
            label="recgen (gRPC, int8)",
        )
        for key, color, label in (
            ("pytorch", "tab:red", "PyTorch generate fp32, serial"),
            ("onnx_alone", "tab:orange", "ONNX int8 unbatched, serial"),
        ):
            v = get(doc, "baselines", key, "text_tokens_per_s")
            if v:
                ax.axhline(v, color=color, ls="--", label=f"{label}: {v:.1f}")
        ax.set_xticks(range(len(cs)), [str(c) for c in cs])
        ax.set_xlabel("concurrent StreamRecommend callers")
        ax.set_ylabel("model-written tokens/s")
        ax.set_title("generation throughput", fontsize=10)
        ax.legend(fontsize=8)
    ax = axes[0][1]
    if gen:
        cs = [g["concurrency"] for g in gen]
        for q, style in (("p50", "o-"), ("p99", "s--")):
            ax.plot(
                cs,
                [get(g, "first_generated_ms", q) for g in gen],
                style,
                color="tab:green",
                label=f"first model text {q}",
            )
            ax.plot(
                cs, [get(g, "first_items_ms", q) for g in gen], style, color="tab:grey", label=f"items {q}"
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel("ms from send")
        ax.set_title("time to first text (StreamRecommend)", fontsize=10)
        ax.legend(fontsize=8)
    ax = axes[1][0]
    rec = get(doc, "server", "recommend")
    if rec:
        names = ["recgen", "echo"]
        sat = [rec[n]["saturation_per_s"] for n in names]
        ax.bar(names, sat, color=["tab:blue", "tab:grey"])
        for i, n in enumerate(names):
            h = rec[n]["half_load"]
            ax.annotate(
                f"{sat[i]:.0f} ok/s\nat half load:\np50 {h['p50_ms']:.1f} ms\np99 {h['p99_ms']:.1f} ms",
                (i, sat[i]),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylim(0, max(sat) * 1.35)
        ax.set_ylabel("Recommend (explain=false) ok/s at saturation")
        ax.set_title(f"Recommend vs empty echo server: {rec['ratio_saturation']:.2f}x", fontsize=10)
    ax = axes[1][1]
    rows = get(doc, "retrieval", "rows") or []
    for row in rows:
        color = "tab:purple" if row["items"] >= 1_000_000 else "tab:cyan"
        curve = row.get("hnsw_curve") or []
        if curve:
            ax.plot(
                [c["recall_at_100"] for c in curve],
                [c["qps_batched"] for c in curve],
                ".-",
                color=color,
                alpha=0.6,
                label=f"{row['name'].split(' ')[0]} HNSW (MIPS lift) efSearch sweep",
            )
        if row.get("chosen_by_policy") is False:
            continue
        ax.plot([1.0], [row["exact_qps_batched"]], "x", color=color, ms=10, label=f"{row['name']} exact")
        ax.plot(
            [row["recall_at_100"]],
            [row["index_qps_batched"]],
            "o",
            mfc="none",
            color=color,
            ms=12,
            label=f"{row['name']} chosen by build_index: {row['index']}",
        )
        nb = row.get("norm_bounded") or []
        if nb:
            ax.plot(
                [x["recall_at_100"] for x in nb],
                [x["qps_batched"] for x in nb],
                "*",
                color=color,
                ms=9,
                label=f"{row['name']} norm-bounded exact, head-share sweep",
            )
    if rows:
        ax.axvline(0.95, color="k", lw=0.6, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("recall@100 (held-out users)")
        ax.set_ylabel("queries/s (batches of 64)")
        ax.set_title("retrieval: chosen index vs exact", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
