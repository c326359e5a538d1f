"""The replay's results: per group and arm, the lifts with intervals, a table and a chart.

Summarizes the collected ArmStats; replays nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tools.replay_eval.metrics import ArmStats, bootstrap_lift, lift
from tools.replay_eval.replay import ARMS
from tools.replay_eval.split import GROUPS

GROUP_LABELS = {"known": "known", "known_20plus": "known, ≥20 past events", "new": "new"}


def users_better(users: Sequence[int], b: Sequence[float], a: Sequence[float]) -> dict[str, int]:
    """How many users got more (fewer, as many) hits with feedback than without:
    a count no heavy user can dominate, unlike the per-event mean."""
    uids, inv = np.unique(np.asarray(users, dtype=np.int64), return_inverse=True)
    diff = np.bincount(inv, weights=np.asarray(b) - np.asarray(a), minlength=uids.size)
    return {"better": int((diff > 0).sum()), "worse": int((diff < 0).sum()), "same": int((diff == 0).sum())}


def summarize(stats: dict[tuple[str, str], ArmStats], n_items: int, n_boot: int = 1000) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for g in GROUPS:
        arms = {a: stats[(g, a)].summary(n_items) for a in ARMS}
        a, b = stats[(g, "static")], stats[(g, "feedback")]
        lifts: dict[str, Any] = {}
        for metric, attr in (("hit_rate@10", "hits"), ("ndcg@10", "ndcgs")):
            ci = bootstrap_lift(b.users, getattr(b, attr), getattr(a, attr), n_boot)
            lifts[metric] = {
                "lift": lift(arms["feedback"][metric], arms["static"][metric]),
                "ci95": None if ci is None else list(ci),
            }
        lifts["users_by_hits"] = users_better(b.users, b.hits, a.hits)
        out[g] = {"arms": arms, "lift_feedback_over_static": lifts}
    return out


def fmt_lift(entry: dict[str, Any]) -> str:
    if entry["lift"] is None:
        return "n/a"
    ci = entry["ci95"]
    ci_text = "" if ci is None else f" [{ci[0]:+.1%}, {ci[1]:+.1%}]"
    return f"{entry['lift']:+.1%}{ci_text}"


def table(results: dict[str, Any]) -> str:
    """A Markdown table: one row per group and arm, then the lifts."""
    lines = [
        "| group | arm | users | events | HR@10 | NDCG@10 | coverage@10 | novelty | ILD |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in GROUPS:
        for a in ARMS:
            s = results[g]["arms"][a]
            lines.append(
                f"| {GROUP_LABELS[g]} | {a} | {s['users']} | {s['events']} | {s['hit_rate@10']:.4f} | "
                f"{s['ndcg@10']:.4f} | {s['coverage@10']:.3f} | {s['novelty']:.2f} | "
                f"{s['intra_list_diversity']:.3f} |"
            )
    lines += [
        "",
        "| group | lift (b)/(a) − 1: HR@10 [95 % CI] | NDCG@10 [95 % CI] | users: more / fewer / same hits |",
        "|---|---|---|---|",
    ]
    for g in GROUPS:
        lf = results[g]["lift_feedback_over_static"]
        u = lf["users_by_hits"]
        lines.append(
            f"| {GROUP_LABELS[g]} | {fmt_lift(lf['hit_rate@10'])} | {fmt_lift(lf['ndcg@10'])} | "
            f"{u['better']} / {u['worse']} / {u['same']} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here; must precede pyplot
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(GROUPS), figsize=(4.5 * len(GROUPS), 4.2), sharey=True)
    width = 0.27
    for ax, g in zip(axes, GROUPS, strict=True):
        x = np.arange(2)
        for i, a in enumerate(ARMS):
            s = results[g]["arms"][a]
            vals = [s["hit_rate@10"], s["ndcg@10"]]
            bars = ax.bar(x + (i - 1) * width, vals, width, label=a)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        n = results[g]["arms"]["feedback"]
        ax.set_xticks(x, ["HitRate@10", "NDCG@10"])
        ax.set_title(f"{GROUP_LABELS[g]}\n({n['users']} users, {n['events']} events)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("per replayed event")
    axes[0].legend()
    fig.suptitle("MovieLens-100K replay: static model vs real-time feedback vs popularity")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
