"""Bench phase "retrieval": the synthetic catalogs' index against exact search
(tools.retrieval_bench), and the memory a process holding each catalog takes (tools.memory hold),
each in its own process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tools.bench.plan import Plan, run_py, sub_env
from tools.harness.procs import ROOT


def phase_retrieval(plan: Plan, work: Path) -> dict[str, Any]:
    out_json = work / "retrieval.json"
    save = work / "catalogs"
    run_py(
        [
            "-m",
            "tools.retrieval_bench",
            "--sizes",
            ",".join(str(s) for s in plan.retrieval_sizes),
            "--universe",
            str(max(plan.retrieval_universe, *plan.retrieval_sizes)),
            "--users",
            str(plan.als_users),
            "--iterations",
            str(plan.als_iterations),
            "--queries",
            str(plan.queries),
            "--threads",
            str(plan.threads),
            "--out",
            str(out_json),
            "--save-dir",
            str(save),
            *([] if plan.retrieval_reference else ["--no-hnsw-small"]),
        ],
        threads=plan.threads,
        timeout=2400,
        log=work / "retrieval.log",
    )
    res = json.loads(out_json.read_text())
    res["memory"] = {}
    for row in res["rows"]:
        d = row.get("saved_to")
        if not d:
            continue
        p = subprocess.run(
            [sys.executable, "-m", "tools.memory", "hold", "--dir", d],
            cwd=ROOT,
            env=sub_env(1),
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        res["memory"][row["name"]] = json.loads(p.stdout.strip().splitlines()[-1])
        shutil.rmtree(d, ignore_errors=True)
    return res
