"""Judge the learned context features on the held-out test split, and report.

Given a split's terms (export/context_features.py) and the weights fitted on
the validation split, score each variant (features at their fitted weights,
the rest off) on the test split with a bootstrap 95% interval over users of
its paired gain vs no context, apply the keep rule (a feature is served only
where its NDCG@10 gain's interval lies above zero), and print a version's
ablation as Markdown (`python -m export.context MODELS_DIR [VERSION]`).

This module fits nothing and writes no files (export/context.py does).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from export.context_features import FEATURES, SplitTerms

VARIANTS = {
    "none": (),
    "+hour": ("hour",),
    "+weekday": ("weekday",),
    "+hour+weekday": ("hour", "weekday"),
    "+intent": ("intent",),
    "all": FEATURES,
}


def bootstrap_ci(diff: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean of per-user paired differences."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def variant_row(
    st: SplitTerms, mode: str, weights: dict[str, float], n_boot: int, seed: int
) -> dict[str, Any]:
    """HR@10 / NDCG@10 with these weights, and the gain over no context with its 95% interval."""
    m = st.metrics(mode, weights)
    row: dict[str, Any] = {"hit_rate@10": float(m[0].mean()), "ndcg@10": float(m[1].mean())}
    if any(weights.values()):
        ref = st.metrics(mode, {})
        for i, key in enumerate(("hit_rate@10", "ndcg@10")):
            d = m[i] - ref[i]
            lo, hi = bootstrap_ci(d, n_boot, seed)
            row[f"{key}_gain"] = float(d.mean())
            row[f"{key}_gain_ci95"] = [lo, hi]
    return row


def ablation(st: SplitTerms, weights: dict[str, dict[str, float]], n_boot: int, seed: int) -> dict[str, Any]:
    """One row per variant (features at their fitted weights, the rest off), per mode."""
    table: dict[str, Any] = {}
    for mode in ("warm", "cold"):
        rows: dict[str, Any] = {}
        for name, feats in VARIANTS.items():
            if any(f not in weights[mode] for f in feats):
                continue  # a feature this data cannot have
            rows[name] = variant_row(st, mode, {f: weights[mode][f] for f in feats}, n_boot, seed)
            if feats and "ndcg@10_gain" not in rows[name]:  # fitted off: the same as none
                rows[name].update({"hit_rate@10_gain": 0.0, "ndcg@10_gain": 0.0})
                rows[name].update({"hit_rate@10_gain_ci95": [0.0, 0.0], "ndcg@10_gain_ci95": [0.0, 0.0]})
        table[mode] = rows
    table["users"] = int(len(st.test_item))
    return table


def keep_features(
    table: dict[str, Any], weights: dict[str, dict[str, float]]
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """(status per feature and mode, weights served) from the ablation `table` of the test split."""
    # Keep a feature only where its own gain on the test split is surely positive.
    features: dict[str, Any] = {}
    served: dict[str, dict[str, float]] = {"warm": {}, "cold": {}}
    for f in FEATURES:
        status = {}
        for mode in ("warm", "cold"):
            variant = {"hour": "+hour", "weekday": "+weekday", "intent": "+intent"}[f]
            row = table[mode].get(variant)
            if row is None:
                status[mode] = "not learned (no timestamps)" if f != "intent" else "not learned (no encoder)"
                served[mode][f] = 0.0
            elif weights[mode][f] == 0.0:
                status[mode] = "off (no gain on validation)"
                served[mode][f] = 0.0
            elif row["ndcg@10_gain_ci95"][0] <= 0.0:
                status[mode] = "off (test gain's 95% interval includes 0 or is negative)"
                served[mode][f] = 0.0
            else:
                status[mode] = "kept"
                served[mode][f] = weights[mode][f]
        features[f] = status
    features["device"] = {"warm": "not learned (no data)", "cold": "not learned (no data)"}
    features["locale"] = {"warm": "not learned (no data)", "cold": "not learned (no data)"}
    return features, served


def format_table(report: dict[str, Any]) -> str:
    """The ablation as a Markdown table (docs/context.md is made from this)."""

    def ci(row: dict[str, Any], key: str) -> str:
        if f"{key}_gain" not in row:
            return "—"
        lo, hi = row[f"{key}_gain_ci95"]
        return f"{row[f'{key}_gain']:+.4f} [{lo:+.4f}, {hi:+.4f}]"

    lines = [
        "| users | variant | HR@10 | NDCG@10 | HR@10 gain [95% CI] | NDCG@10 gain [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("warm", "cold"):
        for name, row in report["ablation"][mode].items():
            lines.append(
                f"| {mode} | {name} | {row['hit_rate@10']:.4f} | {row['ndcg@10']:.4f} "
                f"| {ci(row, 'hit_rate@10')} | {ci(row, 'ndcg@10')} |"
            )
    lines.append("")
    lines.append("| feature | warm users | cold users |")
    lines.append("|---|---|---|")
    for f, st in report["features"].items():
        cells = []
        for mode in ("warm", "cold"):
            w = report["served_weights"][mode].get(f)
            cells.append(st[mode] + (f" (weight {w:g})" if w else ""))
        lines.append(f"| {f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m export.context MODELS_DIR [VERSION]`: print a version's context ablation."""
    import argparse

    from recgen.repository import ModelRepository

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("models")
    ap.add_argument("version", nargs="?")
    args = ap.parse_args(argv)
    mv = ModelRepository(args.models).open(args.version, verify=False)
    report = mv.manifest.metrics.get("context")
    if report is None:
        print(f"{mv.name}: no context step in this version")
        return 1
    print(f"model version {mv.name}: {report['ablation']['users']} held-out users")
    print(format_table(report))
    return 0
