"""One replay evaluation end to end: split, train on the past, load the state, serve, replay.

Returns the results dict; the command line and the output files are in __main__.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.data import Dataset
from tools.replay_eval.metrics import K, MetricContext, popularity_share, unit_rows
from tools.replay_eval.replay import run_replay
from tools.replay_eval.report import summarize
from tools.replay_eval.split import past_dataset, sample_future, time_split
from tools.replay_eval.state import load_state, rfc3339

LOG = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class EvalConfig:
    future_frac: float = 0.1
    max_events: int | None = None
    concurrency: int = 8
    workers: int = 2
    seed: int = 0
    factors: int | None = None  # None: tuned on the past, as `recgen export` does
    iterations: int = 15
    bootstrap: int = 1000
    wheels_dir: Path = ROOT / ".cache" / "wheels"


def display_path(path: Path) -> str:
    """Relative to the repository when inside it: the JSON is committed, and a
    home directory in it would say nothing to a reader."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def build_model(past: Dataset, root: Path, cfg: EvalConfig) -> Path:
    from export.pipeline import export_version
    from recgen.config.export import ExportConfig

    opts = ExportConfig(
        with_llm=False,  # ranking only: the text plays no part in these metrics
        with_encoder=False,
        factors=cfg.factors,
        iterations=cfg.iterations,
        seed=cfg.seed,
        progress=False,
        evaluate_ease=False,
        wheels_dir=cfg.wheels_dir,
    )
    return export_version(past, root, opts)


def metric_context(version: Path, n_train_users: int) -> MetricContext:
    from recgen.repository import ModelVersion

    catalog = ModelVersion.load(version).catalog()
    return MetricContext(
        item_row={it.item_id: i for i, it in enumerate(catalog)},
        share=popularity_share(np.load(version / "item_popularity.npy"), n_train_users),
        unit_factors=unit_rows(np.load(version / "item_factors.npy").astype(np.float64)),
    )


def evaluate(cfg: EvalConfig, workdir: Path) -> dict[str, Any]:
    from export.data import load_movielens100k
    from tools.harness.procs import Gateway

    t0 = time.perf_counter()
    ds = load_movielens100k(cfg.wheels_dir)
    split = time_split(ds, cfg.future_frac)
    future = sample_future(ds, split, cfg.max_events, cfg.seed)
    past = past_dataset(ds, split.past)
    LOG.info(
        "split at %s: %d past events (%d users), %d future events, %d replayed",
        rfc3339(split.cut_time),
        len(split.past),
        past.n_users,
        len(split.future),
        len(future),
    )
    version = build_model(past, workdir / "models", cfg)
    t_model = time.perf_counter()
    loaded = load_state(workdir / "state.db", ds, split.past)
    LOG.info("state: %d past events loaded (real and static ids)", loaded)
    ctx = metric_context(version, past.n_users)
    # No per-user feedback rate limit: a replay sends one user's events back to
    # back, far faster than a person would, and a refused event would be lost.
    args = ("--workers", str(cfg.workers), "--feedback-rate", "0")
    gw = Gateway(workdir / "models", workdir / "state.db", *args).start()
    try:
        t_replay = time.perf_counter()
        stats = asyncio.run(run_replay(gw.target, ds, split, future, ctx, cfg.concurrency))
        t_end = time.perf_counter()
    finally:
        gw.stop()
    manifest = json.loads((version / "manifest.json").read_text())
    return {
        "dataset": ds.source,
        "protocol": {
            "split": f"global by time: last {cfg.future_frac:.0%} of events are the future",
            "cut_time": rfc3339(split.cut_time),
            "past_events": int(len(split.past)),
            "future_events": int(len(split.future)),
            "replayed_events": int(len(future)),
            "k": K,
            "exclusion": "every item the user rated before the event (past and replayed), in every arm",
            "arms": {
                "static": "the user's past events only (no feedback)",
                "feedback": "past events plus every replayed event so far, via SendFeedback (RATE)",
                "popularity": "cold-start answer: training popularity",
            },
            "lift_ci": f"95 % user-level bootstrap ({cfg.bootstrap} resamples)",
        },
        "config": {k: display_path(v) if isinstance(v, Path) else v for k, v in cfg.__dict__.items()},
        "model": {"version": manifest["version"], "mf": manifest["params"]["mf"]},
        "results": summarize(stats, ds.n_items, cfg.bootstrap),
        "runtime_s": {
            "model": round(t_model - t0, 1),
            "replay": round(t_end - t_replay, 1),
            "total": round(t_end - t0, 1),
            "events_per_s": round(len(future) / max(t_end - t_replay, 1e-9), 1),
        },
    }
