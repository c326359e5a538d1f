"""One protocol measured end to end: split, export and serve, fit the peers, score (tools/quality).

Each run writes its own work directory (train CSVs, model versions, server
logs); the report and the command line live elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tools.harness.procs import Gateway
from tools.quality.data import Data, write_train
from tools.quality.metrics import K, goal, rank_metrics, summarize
from tools.quality.offline import offline_top
from tools.quality.peers import fit_peers, interaction_matrix
from tools.quality.report import protocol_table
from tools.quality.served import PREVIOUS_GRID, fetch_served, run_export, served_top
from tools.quality.splits import PROTOCOLS, Split, make_split

LOG = logging.getLogger(__name__)

RANDOM_SEEDS = (0, 1, 2)


def export_and_serve(
    data: Data,
    split: Split,
    users: np.ndarray,
    tests: list[np.ndarray],
    cfg: Config,
    work: Path,
    grid: Sequence[tuple[int, float, float]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], float, float, float]:
    """`recgen export` the train part (work/train.csv, items.csv), serve it, fetch every test
    user's top 10 over gRPC -> (manifest, metrics, export s, server start s, fetch s)."""
    base = work if grid is None else work.parent
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    manifest = run_export(
        work / "models", base / "train.csv", base / "items.csv", work / "export.log", grid=grid
    )
    t_export = time.perf_counter() - t
    item_row = {it.item_id: r for r, it in enumerate(data.items)}
    server = Gateway(work / "models", work / "state.db", "--workers", str(cfg.workers), log_dir=work)
    try:
        t = time.perf_counter()
        server.start()
        t_start = time.perf_counter() - t
        t = time.perf_counter()
        answers, versions = fetch_served(server.target, [data.user_ids[u] for u in users], cfg.concurrency)
        t_fetch = time.perf_counter() - t
    finally:
        server.stop()
    assert versions == {manifest["version"]}, f"served {versions}, exported {manifest['version']}"
    top, unknown = served_top(answers, item_row)
    x = interaction_matrix(data.user, data.item, split.train_rows, data.n_users, data.n_items)
    seen = x[users].toarray() > 0
    served = rank_metrics(top, tests, data.n_items) | {
        "params": manifest["params"]["mf"],
        "answers_short_of_10": int(sum(len(a) < K for a in answers)),
        "unknown_item_ids": unknown,
        "train_items_served": int((np.take_along_axis(seen, np.maximum(top, 0), axis=1) & (top >= 0)).sum()),
    }
    return manifest, served, t_export, t_start, t_fetch


@dataclass
class Config:
    quick: bool = False
    seeds: tuple[int, ...] = RANDOM_SEEDS
    max_users: int | None = None  # evaluate a random sample of test users (--quick: 300)
    concurrency: int = 8
    workers: int = 1
    threads: int = 2  # implicit's own thread pool
    protocols: tuple[str, ...] = PROTOCOLS
    keep: Path | None = None  # keep the work directories here
    compare_grid: bool = False  # also serve a version tuned over PREVIOUS_GRID (before/after)


def run_protocol(protocol: str, seed: int, data: Data, cfg: Config, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    split = make_split(protocol, data.user, data.item, data.ts, seed)
    pick = np.arange(split.test_users.size)
    if cfg.max_users is not None and pick.size > cfg.max_users:
        pick = np.sort(np.random.default_rng(seed).choice(pick.size, cfg.max_users, replace=False))
    users = split.test_users[pick]
    tests = [split.test_items[j] for j in pick]
    LOG.info(
        "%s seed %d: %d train rows, %d test users (%d evaluated)",
        protocol,
        seed,
        split.train_rows.size,
        split.test_users.size,
        users.size,
    )
    inter, items = write_train(data, split.train_rows, work)
    manifest, served, t_export, t_start, t_fetch = export_and_serve(data, split, users, tests, cfg, work)
    version = work / "models" / manifest["version"]
    LOG.info(
        "%s seed %d: recgen export chose %s (%.0f s)", protocol, seed, manifest["params"]["mf"], t_export
    )
    results: dict[str, Any] = {"recgen": served}
    if cfg.compare_grid:
        _, prev, *_ = export_and_serve(data, split, users, tests, cfg, work / "previous-grid", PREVIOUS_GRID)
        results["recgen_previous_grid"] = prev
        LOG.info("%s seed %d: previous grid chose %s", protocol, seed, prev["params"])

    t = time.perf_counter()
    peers = fit_peers(protocol, data, split, seed, cfg.quick, cfg.threads, users)
    t_peers = time.perf_counter() - t
    for name, p in peers.items():
        results[name] = rank_metrics(p.pop("top"), tests, data.n_items) | p
    results["recgen_offline"] = rank_metrics(
        offline_top(data, split, version, manifest["params"]["mf"], users), tests, data.n_items
    )
    q = manifest.get("metrics", {}).get("quality", {})
    return {
        "seed": seed,
        "train_rows": int(split.train_rows.size),
        "test_users": int(split.test_users.size),
        "evaluated_users": int(users.size),
        "test_items": int(sum(len(t) for t in split.test_items)),
        "model_version": manifest["version"],
        "recgen_export": {
            "params": manifest["params"]["mf"],
            "tuning": [
                {"params": tr["params"], "validation_ndcg@10": tr["validation"]["ndcg@10"]}
                for tr in q.get("tuning", [])
            ],
            "own_held_out_ndcg@10": q.get("mf", {}).get("ndcg@10"),
        },
        "models": results,
        "seconds": {
            "export": round(t_export, 1),
            "serve_start": round(t_start, 1),
            "fetch": round(t_fetch, 1),
            "peers": round(t_peers, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }


def evaluate(data: Data, cfg: Config, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for protocol in cfg.protocols:
        seeds = cfg.seeds if protocol == "random_80_20" else (0,)
        runs = []
        for seed in seeds:
            work = workdir / f"{protocol}-{seed}"
            runs.append(run_protocol(protocol, seed, data, cfg, work))
        summary = summarize(runs)
        out[protocol] = {"runs": runs, "summary": summary, "goal": goal(summary)}
        if "recgen_previous_grid" in summary:
            out[protocol]["goal_previous_grid"] = goal(summary, "recgen_previous_grid")
        print(protocol_table(protocol, out[protocol]), flush=True)
    return out
