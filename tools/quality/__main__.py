"""Served ranking quality against strong peers fitted in the same run (`make quality`).

The command line: parse the flags, run every protocol, write the JSON and
the markdown report. What is measured is described in tools/quality/__init__.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tools.quality.data import load_data
from tools.quality.metrics import K
from tools.quality.peers import (
    EASE_LAMBDAS,
    IALS_ALPHAS,
    IALS_FACTORS,
    IALS_ITERATIONS,
    IALS_QUICK_CONFIGS,
    IALS_REGS,
)
from tools.quality.protocol import RANDOM_SEEDS, Config, evaluate
from tools.quality.report import DESCRIPTIONS, goal_text, markdown
from tools.quality.served import ROOT
from tools.quality.splits import PROTOCOLS

LOG = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--interactions", help="CSV or Parquet: user_id,item_id[,rating,timestamp]")
    p.add_argument("--items", help="CSV or Parquet: item_id,title[,text,categories]")
    p.add_argument("--wheels", default=".cache/wheels", help="folder with the recbole wheel (MovieLens-100K)")
    p.add_argument("--quick", action="store_true", help="one random seed, 300 test users, 12 iALS configs")
    p.add_argument("--out", default="docs/quality.json")
    p.add_argument("--md", default="docs/quality.md", help="markdown report ('' for none)")
    p.add_argument("--max-users", type=int, default=None, help="evaluate at most this many test users")
    p.add_argument("--protocols", default="leave_last_one_out,random_80_20,global_time")
    p.add_argument("--keep", help="keep the work directories (train CSVs, versions, logs) here")
    p.add_argument(
        "--compare-grid",
        action="store_true",
        help="also export and serve each split with the export's previous tuning grid (before/after)",
    )
    return p


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def run(args: argparse.Namespace, command: str) -> int:
    """The whole measurement; `command`: how it was invoked (for the report)."""
    t0 = time.perf_counter()
    protocols = tuple(s for s in args.protocols.split(",") if s)
    bad = [s for s in protocols if s not in PROTOCOLS]
    if bad:
        print(f"python -m tools.quality: unknown protocol {bad}; known: {', '.join(PROTOCOLS)}")
        return 2
    cfg = Config(
        quick=args.quick,
        seeds=RANDOM_SEEDS[:1] if args.quick else RANDOM_SEEDS,
        max_users=args.max_users if args.max_users is not None else (300 if args.quick else None),
        protocols=protocols,
        compare_grid=args.compare_grid,
    )
    data = load_data(args.interactions, args.items, args.wheels)
    LOG.info(
        "%s: %d users, %d items, %d interactions", data.source, data.n_users, data.n_items, data.user.size
    )
    if args.keep:
        workdir = Path(args.keep)
        workdir.mkdir(parents=True, exist_ok=True)
        protocols_out = evaluate(data, cfg, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="recgen-quality-") as tmp:
            protocols_out = evaluate(data, cfg, Path(tmp))
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "json": display_path(Path(args.out)),
        "dataset": {
            "source": data.source,
            "users": data.n_users,
            "items": data.n_items,
            "interactions": int(data.user.size),
        },
        "config": {
            "quick": cfg.quick,
            "random_seeds": list(cfg.seeds),
            "max_users": cfg.max_users,
            "k": K,
            "workers": cfg.workers,
            "concurrency": cfg.concurrency,
            "ials_grid": {
                "factors": list(IALS_FACTORS),
                "regularization": list(IALS_REGS),
                "alpha": list(IALS_ALPHAS),
                "iterations": IALS_ITERATIONS,
                "configs": IALS_QUICK_CONFIGS
                if cfg.quick
                else len(IALS_FACTORS) * len(IALS_REGS) * len(IALS_ALPHAS),
            },
            "ease_lambdas": list(EASE_LAMBDAS),
        },
        "protocols": {p: {"description": DESCRIPTIONS[p], **r} for p, r in protocols_out.items()},
        "goal_met_everywhere": all(r["goal"]["met"] for r in protocols_out.values()),
        "runtime_s": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(results))
    print()
    for p, r in protocols_out.items():
        print(f"{p}: {goal_text(r['goal'])}")
    print(f"wrote {out}" + (f" and {args.md}" if args.md else "") + f" ({results['runtime_s']:.0f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(build_parser().parse_args(argv), shlex.join(["python", "-m", "tools.quality", *argv]))


if __name__ == "__main__":
    sys.exit(main())
