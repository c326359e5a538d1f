"""A/B of the generation engine through the public API: arms side by side, in one run.

    python -m tools.gen_ab --arm before=/tmp/old:/tmp/mdef --arm after=.:/tmp/mdef-new \\
        --levels 1,32 --duration 20,30 --warmup 3,6 --rounds 2 --out /tmp/ab.json

An arm is NAME=SOURCE_TREE:MODELS: `recgen serve` run from that source tree
(e.g. a `git archive` of the commit before a change) on that model repository.
Each round starts every arm's server in turn (the order reverses every other
round, so a drift of the machine's load hits both sides alike), seeds the same
bench users, and runs the closed-loop StreamRecommend load of
`tools.gen_bench.streams.server_level` at each concurrency. The report gives, per arm
and level, tokens/s and time to first model text (p50 / p99) of every round,
and each arm's ratio to the first arm per round: on a shared machine only the
ratios mean something. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

LOG = logging.getLogger("tools.gen_ab")


def run_arm(
    name: str, root: Path, models: str, args: argparse.Namespace, work: Path, users: list[Any]
) -> dict[str, Any]:
    """One server from `root` on `models`: every level once."""
    from tokenizers import Tokenizer

    from recgen.repository import ModelRepository
    from tools.bench.server_phase import recgen_server
    from tools.gen_bench.streams import server_level, stats_delta, worker_stats
    from tools.gen_bench.users import seed_users

    mv = ModelRepository(models).open(None, verify=False)
    tok = Tokenizer.from_file(str(mv.path / "llm" / "tokenizer.json"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"arm": name, "root": str(root), "models": models, "levels": []}
    with recgen_server(models, args.workers, work, root=root).start(timeout=600.0) as srv:
        asyncio.run(seed_users(srv.target, users))
        addrs = [a for _, a in srv.worker_addresses()]
        for c, dur, warm in zip(args.levels, args.duration, args.warmup, strict=True):
            s0 = asyncio.run(worker_stats(addrs))
            rep, _ = asyncio.run(
                server_level(
                    srv.target,
                    [u.user_id for u in users],
                    c,
                    duration=dur,
                    warmup=warm,
                    tokenizer=tok,
                )
            )
            rep["workers"] = stats_delta(s0, asyncio.run(worker_stats(addrs)))["total"]
            LOG.info(
                "%s c=%d: %.1f tok/s, first text p50/p99 %s/%s ms (load %.1f)",
                name,
                c,
                rep["tokens_per_s"],
                (rep["first_generated_ms"] or {}).get("p50"),
                (rep["first_generated_ms"] or {}).get("p99"),
                rep["host_load"],
            )
            out["levels"].append(rep)
    return out


def summarize(runs: list[dict[str, Any]], arms: list[str], levels: list[int]) -> list[dict[str, Any]]:
    """Per arm and level: the rounds' values and, per round, the ratio to the first arm."""
    rows = []
    for arm in arms:
        for i, c in enumerate(levels):
            mine = [r["levels"][i] for r in runs if r["arm"] == arm]
            base = [r["levels"][i] for r in runs if r["arm"] == arms[0]]
            row: dict[str, Any] = {"arm": arm, "concurrency": c}
            for key, get in (
                ("tokens_per_s", lambda x: x["tokens_per_s"]),
                ("ttft_p50_ms", lambda x: (x["first_generated_ms"] or {}).get("p50")),
                ("ttft_p99_ms", lambda x: (x["first_generated_ms"] or {}).get("p99")),
            ):
                vals = [get(x) for x in mine]
                row[key] = vals
                ratios = [a / b for a, b in zip(vals, (get(x) for x in base), strict=True) if a and b]
                row[f"{key}_vs_{arms[0]}"] = [round(v, 3) for v in ratios]
                row[f"{key}_vs_{arms[0]}_median"] = round(statistics.median(ratios), 3) if ratios else None
            row["prefill_tokens_per_request"] = [
                round(x["workers"]["llm_prefill_tokens"] / max(x["workers"]["llm_prefill_rows"], 1), 1)
                for x in mine
            ]
            row["host_load"] = [x["host_load"] for x in mine]
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gen_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--arm", action="append", required=True, help="NAME=SOURCE_TREE:MODELS (first = baseline)")
    p.add_argument("--levels", default="1,32")
    p.add_argument("--duration", default="20,30", help="measured seconds per level")
    p.add_argument("--warmup", default="3,6", help="warm-up seconds per level")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--users", type=int, default=64)
    p.add_argument("--wheels", default=".cache/wheels")
    p.add_argument("--work", default="/tmp/recgen-gen-ab")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.levels = [int(x) for x in args.levels.split(",")]
    args.duration = [float(x) for x in args.duration.split(",")]
    args.warmup = [float(x) for x in args.warmup.split(",")]
    arms = []
    for spec in args.arm:
        name, _, rest = spec.partition("=")
        root, _, models = rest.partition(":")
        if not (name and root and models):
            p.error(f"--arm {spec!r}: expected NAME=SOURCE_TREE:MODELS")
        arms.append((name, Path(root).resolve(), models))

    from tools.gen_bench.users import movielens_users

    users = movielens_users(Path(args.wheels), args.users)
    t0 = time.time()
    runs = []
    for rnd in range(args.rounds):
        order = arms if rnd % 2 == 0 else arms[::-1]
        for name, root, models in order:
            res = run_arm(name, root, models, args, Path(args.work) / f"r{rnd}-{name}", users)
            res["round"] = rnd
            runs.append(res)
    names = [a[0] for a in arms]
    summary = summarize(runs, names, args.levels)
    doc = {
        "command": " ".join(["python -m tools.gen_ab", *(sys.argv[1:] if argv is None else argv)]),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
        "seconds": round(time.time() - t0, 1),
        "summary": summary,
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    for row in summary:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
