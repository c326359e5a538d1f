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
from pathlib import Path
from typing import Any

import tools.bench
from tools.bench.baselines import phase_baselines
from tools.bench.machine import LoadSampler, gpu_status, machine
from tools.bench.plan import Plan
from tools.bench.plot import plot
from tools.bench.retrieval import phase_retrieval
from tools.bench.server_phase import phase_server
from tools.bench.summary import markdown, ratios

LOG = logging.getLogger("bench")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.bench", description=(tools.bench.__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="100K catalog only, shorter loads (a few minutes)")
    p.add_argument(
        "--models", default="models", help="model repository (the newest complete version is used)"
    )
    p.add_argument("--wheels", default=".cache/wheels")
    p.add_argument("--workers", type=int, default=2, help="recgen serve --workers (default 2)")
    p.add_argument("--threads", type=int, default=0, help="threads of the baselines and FAISS (0: cores)")
    p.add_argument("--out", default="docs/bench.json")
    p.add_argument("--plot", default="docs/bench.png")
    p.add_argument("--skip", default="", help="comma list of phases to skip: server,baselines,retrieval")
    p.add_argument("--work", default="", help="keep intermediate files here (default: a temp dir)")
    p.add_argument(
        "--from-json", default="", help="measure nothing: redo the table and the plot from this JSON"
    )
    args = p.parse_args(argv)
    if args.from_json:
        old: dict[str, Any] = json.loads(Path(args.from_json).read_text())
        old["ratios"] = ratios(old)
        old["summary_markdown"] = markdown(old)
        Path(args.out).write_text(json.dumps(old, indent=2, default=str) + "\n")
        if args.plot:
            plot(old, Path(args.plot))
        print(old["summary_markdown"])
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("faiss.loader", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    threads = args.threads or len(os.sched_getaffinity(0))
    plan = Plan.make(args.quick, threads, args.workers)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    work = Path(args.work or tempfile.mkdtemp(prefix="recgen-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load = LoadSampler().start()
    t0 = time.perf_counter()
    doc: dict[str, Any] = {
        "quick": args.quick,
        "command": "python -m tools.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "gpu": gpu_status(),
        "plan": {k: v for k, v in plan.__dict__.items()},
        "errors": {},
    }
    if doc["gpu"]["note"]:
        print(doc["gpu"]["note"], flush=True)
    wheels = Path(args.wheels)
    srv: dict[str, Any] | None = None
    phases: list[tuple[str, Callable[[], Any]]] = [
        ("server", lambda: phase_server(plan, args.models, wheels, work, load)),
        ("baselines", lambda: phase_baselines(plan, srv, wheels, work) if srv else None),
        ("retrieval", lambda: phase_retrieval(plan, work)),
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
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if args.plot:
        plot(doc, Path(args.plot))
    print(doc["summary_markdown"])
    print(
        f"\n{doc['machine']['nproc']} cores, {doc['machine']['cpu_model']}; load average during the run "
        f"min {doc['load']['min']} / mean {doc['load']['mean']} / max {doc['load']['max']}; "
        f"{doc['total_s']:.0f} s; JSON {args.out}, plot {args.plot}; work files {work}"
    )
    if doc["gpu"]["note"]:
        print(doc["gpu"]["note"])
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if doc["errors"] else 0
