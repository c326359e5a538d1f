"""`python -m tools.bench`: run the phases (each one's failure recorded, the others still run),
then write the JSON, the table and the plot."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import tools.bench
from tools.bench.baselines import phase_baselines
from tools.bench.growth import measure
from tools.bench.machine import LoadSampler, gpu_status, machine
from tools.bench.plan import Plan
from tools.bench.plot import plot
from tools.bench.rank_cost import phase_rank
from tools.bench.retrieval import phase_retrieval
from tools.bench.server_phase import phase_server
from tools.bench.summary import get, growth_lines, markdown, ratios, uncomputed

LOG = logging.getLogger("bench")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.bench", description=(tools.bench.__doc__ or "").split("\n\n")[0]
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="100K catalog only, shorter loads (a few minutes)")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="CI size: every phase at its smallest (seconds-long loads, a 20K catalog, 2-3 baseline "
        "prompts), ~1-2 min on 2 cores with a tiny model; checks every ratio is computed, judges no goal",
    )
    p.add_argument(
        "--models", default="models", help="model repository (the newest complete version is used)"
    )
    p.add_argument("--wheels", default=".cache/wheels")
    p.add_argument("--workers", type=int, default=2, help="recgen serve --workers (default 2)")
    p.add_argument("--threads", type=int, default=0, help="threads of the baselines and FAISS (0: cores)")
    p.add_argument(
        "--out",
        default="docs/bench.json",
        help="the JSON; a directory (no .json suffix): DIR/bench.json, DIR/bench.png, DIR/bench_table.md",
    )
    p.add_argument("--plot", default="docs/bench.png")
    p.add_argument(
        "--skip", default="", help="comma list of phases to skip: server,rank,baselines,retrieval,growth"
    )
    p.add_argument("--work", default="", help="keep intermediate files here (default: a temp dir)")
    p.add_argument(
        "--from-json", default="", help="measure nothing: redo the table and the plot from this JSON"
    )
    args = p.parse_args(argv)
    table_md: Path | None = None
    if Path(args.out).suffix != ".json":  # --out DIR: everything in one folder
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        args.out, args.plot = str(out_dir / "bench.json"), str(out_dir / "bench.png")
        table_md = out_dir / "bench_table.md"
    if args.from_json:
        old: dict[str, Any] = json.loads(Path(args.from_json).read_text())
        old["ratios"] = ratios(old)
        old["summary_markdown"] = markdown(old)
        old["uncomputed"] = uncomputed(old)
        Path(args.out).write_text(json.dumps(old, indent=2, default=str) + "\n")
        if args.plot:
            plot(old, Path(args.plot))
        if table_md is not None:
            table_md.write_text(old["summary_markdown"] + "\n")
        print(old["summary_markdown"])
        _print_growth(old)
        return _verdict(old)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("faiss.loader", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    threads = args.threads or len(os.sched_getaffinity(0))
    plan = Plan.make(args.quick, threads, args.workers, smoke=args.smoke)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if "server" in skip:
        skip.add("baselines")  # they decode the prompts the server phase built
    work = Path(args.work or tempfile.mkdtemp(prefix="recgen-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load = LoadSampler().start()
    t0 = time.perf_counter()
    doc: dict[str, Any] = {
        "quick": args.quick,
        "mode": plan.mode,
        "command": "python -m tools.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "gpu": gpu_status(),
        "plan": asdict(plan),
        "skipped": sorted(skip),
        "errors": {},
    }
    if doc["gpu"]["note"]:
        print(doc["gpu"]["note"], flush=True)
    wheels = Path(args.wheels)
    srv: dict[str, Any] | None = None
    phases: list[tuple[str, Callable[[], Any]]] = [
        ("server", lambda: phase_server(plan, args.models, wheels, work, load)),
        ("rank", lambda: phase_rank(plan, args.models, work)),
        ("baselines", lambda: phase_baselines(plan, srv, wheels, work) if srv else None),
        ("retrieval", lambda: phase_retrieval(plan, work)),
        # Last: the longest phase at full size (~15 min), and it needs no other phase.
        ("growth", lambda: measure(plan.growth, Path(tempfile.mkdtemp(prefix="growth-", dir=work)))),
    ]
    for name, fn in phases:
        if name in skip:
            continue
        t = time.time()
        LOG.info("phase %s ...", name)
        try:
            result = fn()
            if result is not None:
                if name == "server":
                    srv = result
                    doc[name] = {k: v for k, v in result.items() if not k.startswith("_")}
                else:
                    doc[name] = result
        except Exception as e:  # noqa: BLE001 - record, go on with the other phases
            LOG.error("phase %s failed: %s", name, e)
            doc["errors"][name] = "".join(traceback.format_exception(e))[-4000:]
        doc.setdefault("phase_seconds", {})[name] = round(time.time() - t, 1)
        doc.setdefault("phase_load", {})[name] = load.between(t, time.time())
    doc["load"] = load.stop()
    doc["total_s"] = round(time.perf_counter() - t0, 1)
    doc["ratios"] = ratios(doc)
    doc["summary_markdown"] = markdown(doc)
    doc["uncomputed"] = uncomputed(doc)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if args.plot:
        plot(doc, Path(args.plot))
    if table_md is not None:
        table_md.write_text(doc["summary_markdown"] + "\n")
    print(doc["summary_markdown"])
    _print_growth(doc)
    print(
        f"\n{doc['machine']['nproc']} cores, {doc['machine']['cpu_model']}; load average during the run "
        f"min {doc['load']['min']} / mean {doc['load']['mean']} / max {doc['load']['max']}; "
        f"{doc['total_s']:.0f} s; JSON {args.out}, plot {args.plot}; work files {work}"
    )
    if doc["gpu"]["note"]:
        print(doc["gpu"]["note"])
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return _verdict(doc)


def _print_growth(doc: dict[str, Any]) -> None:
    """The growth exponents, one line each with the goal's verdict and why it was missed (a --smoke
    run judges none); nothing when the document has no growth phase (skipped, failed, an older JSON)."""
    lines = growth_lines(doc)
    if lines:
        judged = "" if doc.get("mode") != "smoke" else "; a smoke run judges no goal"
        print(f"\ngrowth exponents ({get(doc, 'growth', 'command')}{judged}):")
        print("\n".join(lines))


def _verdict(doc: dict[str, Any]) -> int:
    """1 when a phase failed or a ratio that should have been computed was not (None or NaN), in
    every mode; goals missed do not fail the run (the table shows them)."""
    for name in doc.get("errors") or {}:
        print(f"phase {name} failed (see the JSON's errors)", file=sys.stderr)
    for line in doc["uncomputed"]:
        print(f"not computed: {line}", file=sys.stderr)
    return 1 if doc.get("errors") or doc["uncomputed"] else 0
