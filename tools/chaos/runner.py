"""`python -m tools.chaos`: run the scenarios asked for, print the table, write the JSON.

The scenarios are in their own modules; this only sequences them (the worker faults and the
deadlines share one gateway, overload and durability start their own) and reports.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tools.chaos
from tools.chaos import deadlines, durability, overload, rolling, worker_faults
from tools.chaos.client import seed_histories
from tools.chaos.plan import WORKDIR, Plan, gateway
from tools.chaos.report import Row, table

LOG = logging.getLogger(__name__)
SCENARIOS = ("deadlines", "sigkill", "sigstop", "overload", "durability", "rolling")
# results key -> its table row, in the table's order
ROWS: tuple[tuple[str, Callable[[dict[str, Any]], Row]], ...] = (
    ("worker_sigkill", lambda f: worker_faults.row("worker_sigkill", f)),
    ("worker_sigstop", lambda f: worker_faults.row("worker_sigstop", f)),
    ("deadlines", deadlines.row),
    ("overload", overload.row),
    ("durability", durability.row),
    ("rolling", rolling.row),
)


def rows(r: dict[str, Any]) -> list[Row]:
    return [row(r[key]) for key, row in ROWS if r.get(key) is not None]


def newest_version(models: Path) -> str:
    from recgen.repository import ModelRepository

    versions = ModelRepository(models).versions()
    if not versions:
        raise SystemExit(f"chaos: no model version in {models}: run `make export` first")
    return str(versions[-1])


async def run(models: Path, plan: Plan, only: set[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    t = time.perf_counter()
    if only & {"sigkill", "sigstop", "deadlines"}:
        with gateway(plan, models, "faults.db", "faults", "--workers", "2") as serve:
            results["startup_s"] = round(serve.started_s, 1)
            await seed_histories(serve.target, plan.seeded_users)
            if "deadlines" in only:
                LOG.info("deadlines")
                results["deadlines"] = await deadlines.deadlines(serve, plan)
            if "sigkill" in only:
                LOG.info("worker SIGKILL")
                results["worker_sigkill"] = await worker_faults.worker_fault(serve, plan, signal.SIGKILL)
            if "sigstop" in only:
                LOG.info("worker SIGSTOP")
                results["worker_sigstop"] = await worker_faults.worker_fault(serve, plan, signal.SIGSTOP)
    if "overload" in only:
        LOG.info("overload")
        args = ("--workers", "2", "--max-in-flight", str(plan.max_in_flight))
        with gateway(plan, models, "overload.db", "overload", *args) as serve:
            await seed_histories(serve.target, plan.seeded_users)
            results["overload"] = await overload.overload(serve, plan)
    if "durability" in only:
        LOG.info("durability")
        results["durability"] = await durability.durability(models, plan)
    if "rolling" in only:
        LOG.info("rolling restart")
        results["rolling"] = await rolling.rolling_restart(models, plan)
    results["elapsed_s"] = round(time.perf_counter() - t, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.chaos", description=(tools.chaos.__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--models", default="models", help="model repository (default: models)")
    p.add_argument("--quick", action="store_true", help="shorter phases and fewer kill cycles (< 4 min)")
    p.add_argument("--json", help="write every figure here, e.g. docs/chaos.json")
    p.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=WORKDIR,
        help="state files and process logs: a new or empty directory (default: var/chaos, emptied first)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if only - set(SCENARIOS):
        p.error(f"unknown scenarios {sorted(only - set(SCENARIOS))}")
    models = Path(args.models).resolve()
    version = newest_version(models)
    plan = Plan.make(args.quick, args.workdir.resolve())
    if plan.dir == WORKDIR:
        shutil.rmtree(WORKDIR, ignore_errors=True)
    elif plan.dir.exists() and any(plan.dir.iterdir()):
        p.error(f"--workdir {plan.dir} is not empty")  # never delete what a caller named
    plan.dir.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(run(models, plan, only))
    rs = rows(results)
    print(table(rs))
    failed = sum(not r.ok for r in rs)
    print(f"\n{len(rs)} scenarios, {failed} failed, {results['elapsed_s']} s; logs in {plan.dir}")
    if args.json:
        doc = {
            "meta": {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                "model_version": version,
                "argv": sys.argv,
                "plan": dataclasses.asdict(plan),
            },
            "results": results,
            "table": [dataclasses.asdict(r) for r in rs],
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r.ok for r in rs) else 1
