"""The worker's rank step alone, in one process: CPU-µs per row of building jobs and ranking them.

    python -m tools.bench.rank_micro --models models [--rows 64] [--repeat 30]

Loads the serving version as a worker does, takes `--rows` training users (each with 2 live
events, so the held history is merged as in serving) and reports process CPU time per row
(robust to other jobs on the machine, unlike wall time) of:
  - building the jobs with the held-history and folded-user caches warm (a user's repeat
    request), and with both cleared before each batch (a user's first request, or one with a new
    event);
  - ranking the batch with exact retrieval by one matrix product (with the users' kept vectors,
    and folding every user in again), and through the FAISS index.
No gRPC, no gateway: tools/bench/rank_cost.py measures the whole path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import worker.ranking as ranking
from recgen.config import WorkerConfig
from recgen.worker.v1 import worker_pb2 as wpb
from worker.metrics import Metrics
from worker.model import LoadedModel
from worker.rank_rows import row_job


def _cpu_us(f: Callable[[], object], repeat: int) -> float:
    f()
    c = time.process_time()
    for _ in range(repeat):
        f()
    return (time.process_time() - c) / repeat * 1e6


def run(models: str, rows: int = 64, repeat: int = 30) -> dict[str, float]:
    m = LoadedModel.load(Path(models), None, WorkerConfig(threads=1), Metrics())
    try:
        assert m.users is not None and m._held is not None, "the version holds no user histories"
        held = m._held
        ids = [u.decode() if isinstance(u, bytes) else str(u) for u in list(m.users.ids)[:rows]]
        live = {
            "history_item_ids": ["5", "6"],
            "history_weights": [1.0, 1.0],
            "history_timestamps": [2e9] * 2,
        }
        req = wpb.RankRowsRequest(rows=[wpb.RankRow(user_id=u, k=10, **live) for u in ids])  # type: ignore[arg-type]
        jobs = [row_job(m, r) for r in req.rows]
        n = len(jobs)
        out = {"rows": float(n)}
        out["build_cached_us_per_row"] = _cpu_us(lambda: [row_job(m, r) for r in req.rows], repeat) / n

        def uncached() -> None:
            held.cache_clear()  # type: ignore[attr-defined]  # an lru_cache
            m.folded_users.clear()
            for r in req.rows:
                row_job(m, r)

        out["build_uncached_us_per_row"] = _cpu_us(uncached, repeat) / n
        jobs = [row_job(m, r) for r in req.rows]
        unfolded = [dataclasses.replace(j, folded=None) for j in jobs]  # fold in on every call
        dense_max = ranking.DENSE_MAX
        try:
            out["rank_dense_us_per_row"] = _cpu_us(lambda: m.ranker.rank(jobs), repeat) / n
            out["rank_dense_unfolded_us_per_row"] = _cpu_us(lambda: m.ranker.rank(unfolded), repeat) / n
            ranking.DENSE_MAX = 0  # through the index
            out["rank_index_us_per_row"] = _cpu_us(lambda: m.ranker.rank(jobs), repeat) / n
        finally:
            ranking.DENSE_MAX = dense_max
        return {k: round(v, 1) for k, v in out.items()}
    finally:
        m.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.rank_micro", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="models")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--repeat", type=int, default=30)
    a = p.parse_args(argv)
    print(json.dumps(run(a.models, a.rows, a.repeat), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
