"""recgen for real: `recgen export` as a subprocess, and each user's top 10 over gRPC.

Loopback only; the server itself is a tools.harness.procs.Gateway. Nothing
here computes a metric: it returns what the export wrote and what the
server answered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tools.quality.metrics import K

ROOT = Path(__file__).resolve().parents[2]


def _recgen(*args: str, **kw: Any) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "recgen.cli", *args], cwd=ROOT, env=env, **kw)


# The export's tuning grid before `make quality` measured it (export/model_selection.py TUNING_GRID):
# `--compare-grid` builds a second version per split with it, for a before/after in one run.
PREVIOUS_GRID = ((32, 0.01, 1.0), (32, 0.1, 2.0), (64, 0.05, 1.0), (64, 0.5, 3.0))
_WITH_GRID = (
    "import sys; import export.model_selection as p; from export.mf import ALSParams; "
    "p.TUNING_GRID = [ALSParams(factors=f, reg=r, alpha=a) for f, r, a in {grid!r}]; "
    "from recgen.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run_export(
    models: Path,
    inter: Path,
    items: Path,
    log: Path,
    timeout: float = 3600.0,
    grid: Sequence[tuple[int, float, float]] | None = None,
) -> dict[str, Any]:
    """`recgen export` as a subprocess; returns the manifest of the version it wrote.

    grid: (factors, reg, alpha) candidates to tune over instead of the export's own grid."""
    args = ["export", "--models", str(models), "--interactions", str(inter), "--items", str(items)]
    args += ["--no-llm", "--no-encoder", "--quiet"]
    with log.open("w") as f:
        if grid is None:
            p = _recgen(*args, stdout=f, stderr=subprocess.STDOUT)
        else:
            code = _WITH_GRID.format(grid=tuple(grid))
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            cmd = [sys.executable, "-c", code, *args]
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            code = p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"recgen export exited with {code}:\n{tail}")
    version = json.loads((models / "SERVING").read_text())["version"]
    return json.loads((models / version / "manifest.json").read_text())


def fetch_served(
    target: str, user_ids: Sequence[str], concurrency: int = 8
) -> tuple[list[list[str]], set[str]]:
    """Each user's served top 10 (Recommend, k=10, no context); and the model versions seen."""
    import grpc

    from recgen.v1 import recommender_pb2 as pb
    from recgen.v1 import recommender_pb2_grpc as pbg

    versions: set[str] = set()
    with grpc.insecure_channel(target) as ch:
        stub = pbg.RecommenderStub(ch)

        def one(uid: str) -> list[str]:
            for attempt in range(4):
                try:
                    resp = stub.Recommend(pb.RecommendRequest(user_id=uid, k=K), timeout=60)
                    versions.add(resp.model_version)
                    return [it.item_id for it in resp.items]
                except grpc.RpcError as e:
                    retry = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
                    if attempt == 3 or e.code() not in retry:
                        raise
                    time.sleep(0.5 * (attempt + 1))
            raise AssertionError("unreachable")

        with ThreadPoolExecutor(concurrency) as ex:
            return list(ex.map(one, user_ids)), versions


def served_top(
    answers: Sequence[Sequence[str]], item_row: dict[str, int], k: int = K
) -> tuple[np.ndarray, int]:
    """Item ids -> (m, k) rows, -1 padded; and how many returned ids are not in the catalog."""
    top = np.full((len(answers), k), -1, dtype=np.int64)
    unknown = 0
    for j, ids in enumerate(answers):
        for r, iid in enumerate(ids[:k]):
            row = item_row.get(iid, -1)
            unknown += row < 0
            top[j, r] = row
    return top, unknown
