"""The console table and the markdown report (docs/quality.md) of a quality run.

Formatting only: it reads the results dict and measures nothing.
"""

from __future__ import annotations

from typing import Any

from tools.quality.metrics import METRICS
from tools.quality.peers import IALS_ITERATIONS, IALS_QUICK_CONFIGS
from tools.quality.served import PREVIOUS_GRID

MODELS = ("recgen", "implicit_als", "ease", "popularity")
LABELS = {
    "recgen": "recgen, served (gRPC)",
    "implicit_als": "implicit iALS, tuned",
    "ease": "EASE, tuned",
    "popularity": "popularity",
    "recgen_offline": "recgen version, offline fold-in",
    "recgen_previous_grid": "recgen, served, previous tuning grid",
}

DESCRIPTIONS = {
    "leave_last_one_out": "temporal leave-last-one-out: each user's last interaction by time (ties: file "
    "order) is the test item; users with >= 2 interactions",
    "random_80_20": "per-user random 80/20 (20 % of each user's interactions, >= 1, are test); "
    "mean +- sd over seeds",
    "global_time": "global time split: the newest 20 % of interactions are test; test users have >= 1 "
    "train interaction",
}


def _cell(s: dict[str, float], multi: bool, digits: int = 4) -> str:
    if multi:
        return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


def _param_text(name: str, run: dict[str, Any]) -> str:
    m = run["models"].get(name, {})
    p = m.get("params", {})
    if name in ("recgen", "recgen_previous_grid"):
        return f"{p.get('factors')} f, λ {p.get('reg'):g}, α {p.get('alpha'):g}, {p.get('iterations')} it"
    if name == "implicit_als":
        return f"{p['factors']} f, reg {p['regularization']:g}, α {p['alpha']:g}"
    if name == "ease":
        return f"λ {p['lambda']:g}"
    return ""


def protocol_rows(protocol: str, res: dict[str, Any]) -> list[list[str]]:
    multi = len(res["runs"]) > 1
    rows = []
    for name in (*MODELS, "recgen_previous_grid", "recgen_offline"):
        if name not in res["summary"]:
            continue
        s = res["summary"][name]
        params = "; ".join(dict.fromkeys(_param_text(name, r) for r in res["runs"]))
        rows.append(
            [LABELS[name], *(_cell(s[m], multi, 3 if m == "coverage@10" else 4) for m in METRICS), params]
        )
    return rows


def goal_text(g: dict[str, Any]) -> str:
    verdict = "MET" if g["met"] else "MISSED"
    pct = f" ({g['gap_pct']:+.1f} %)" if g["gap_pct"] is not None else ""
    return (
        f"goal {verdict}: served NDCG@10 {g['served_ndcg@10']:.4f} vs {LABELS[g['target']]} "
        f"{g['target_ndcg@10']:.4f}, gap {g['gap']:+.4f}{pct}"
    )


def protocol_table(protocol: str, res: dict[str, Any]) -> str:
    head = ["model", "HR@10", "NDCG@10", "recall@10", "cov@10", "params"]
    rows = protocol_rows(protocol, res)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    r0 = res["runs"][0]
    lines = [
        f"== {protocol}: {DESCRIPTIONS[protocol]}",
        f"   {r0['train_rows']} train rows, {r0['test_users']} test users "
        f"({r0['evaluated_users']} evaluated), {len(res['runs'])} run(s)",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
    ]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(goal_text(res["goal"]))
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Served ranking quality against tuned peers (`make quality`)",
        "",
        f"Generated {results['date']} by `{results['command']}` "
        f"({results['dataset']['source']}: {results['dataset']['users']} users, "
        f"{results['dataset']['items']} items, {results['dataset']['interactions']} interactions; "
        f"{results['runtime_s']:.0f} s on this machine). Raw numbers: `{results['json']}`.",
        "",
        "recgen is measured **as served**: the train part of each split goes through `recgen export "
        "--no-llm --no-encoder` (its own tuning, on a validation split carved from the train part), "
        "the version is served by `recgen serve --workers 1`, and each test user's top 10 is fetched "
        "with `Recommend(user_id, k=10)` over gRPC (no request context). The peers are fitted on the "
        "same train part in the same run. Train items are excluded for every model (the server "
        "excludes everything a known user interacted with).",
        "",
    ]
    for protocol, res in results["protocols"].items():
        lines += [f"## {protocol}", "", DESCRIPTIONS[protocol] + ".", ""]
        r0 = res["runs"][0]
        lines.append(
            f"{r0['train_rows']} train interactions, {r0['test_users']} test users "
            f"({r0['evaluated_users']} evaluated), {len(res['runs'])} run(s)."
        )
        lines += [
            "",
            "| model | HR@10 | NDCG@10 | recall@10 | coverage@10 | chosen params |",
            "|---|---|---|---|---|---|",
        ]
        for row in protocol_rows(protocol, res):
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", f"**{goal_text(res['goal'])}**", ""]
        if "goal_previous_grid" in res:
            lines += [f"With the export's previous tuning grid: {goal_text(res['goal_previous_grid'])}.", ""]
    lines += [
        "## Definitions and notes",
        "",
        "- k = 10, binary relevance, averaged over test users. HR@10: a test item is in the list. "
        "NDCG@10: Σ 1/log2(rank+1) over listed test items, divided by the ideal DCG of "
        "min(|test items|, 10) hits. recall@10: hits / min(|test items|, 10) (so it reaches 1 for a "
        "perfect list even when a user has more than 10 test items). coverage@10: distinct items in "
        "all lists / catalog size. With one test item (leave-last-one-out) HR@10 = recall@10.",
        "- A test item the user also has in the train part is dropped, and users left without test "
        "items are not test users (ML-100K has no repeated user-item pairs: no effect there).",
        "- **implicit iALS**: `implicit` 0.7.3 CPU `AlternatingLeastSquares` (conjugate gradient, "
        f"{IALS_ITERATIONS} iterations, binary input), BLAS pinned to 1 thread, 2 own threads. Grid "
        "factors {32, 64, 128} × regularization {0.01, 0.05, 0.1, 0.5, 1} × alpha {1, 2, 5, 10, 20} "
        f"(all 75 configs; `--quick`: {IALS_QUICK_CONFIGS} drawn at random), chosen by NDCG@10 on a "
        "validation split carved from the train part the same way as the protocol (leave-last-one-out "
        "of the train part; another random 80/20 of it; its newest 20 %), then refitted on the whole "
        "train part. Scores: its trained user factors · item factors.",
        "- **EASE**: λ in {50, 100, 200, 500, 1000}, chosen the same way, refitted on the train part.",
        "- **popularity**: train interaction counts.",
        "- **recgen, served**: what `recgen export` chose by itself (it tunes on leave-last-one-out of "
        "its input, whatever the protocol: it cannot know the protocol). The served user vector is "
        "fold-in of the user's version-held history (newest 200 events, 90-day half-life decay "
        "counted from the user's newest event).",
        "- **recgen version, offline fold-in** (diagnostic, not a goal): the same version's item "
        "factors, fold-in of all train interactions with weight 1 and no decay (the export's own "
        "evaluation). The difference to the served row is what serving-time history handling does.",
        "- Goal: served NDCG@10 ≥ tuned iALS on every protocol, and ≥ EASE where EASE beats iALS "
        "(random 80/20: means over seeds).",
        "- **recgen, served, previous tuning grid** (with `--compare-grid`): the same train part "
        "exported once more with the export's tuning grid before this measurement "
        f"(factors, λ, α: {', '.join(str(g) for g in PREVIOUS_GRID)}), served and fetched the same way: "
        "the before/after of the tuning change in one run.",
    ]
    return "\n".join(lines) + "\n"
