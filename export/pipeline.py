"""`recgen export`: data → cleaned dataset → MF → scorer, index, encoder, LLM → version.

Reads the steps top-down; each step is its own module. Everything is built
inside a hidden temporary version directory and made visible only when the
manifest has been written (recgen.repository.VersionWriter), so an error or
a crash at any step leaves no version that looks complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from export.data import DataError, Dataset, load_files, load_movielens100k
from export.evaluate import (
    evaluate_ease,
    evaluate_mf,
    evaluate_popularity,
    leave_last_out,
    user_histories,
)
from export.index import EXACT_MAX_ITEMS, build_index, save_index
from export.mf import ALSParams, train_als
from export.scorer_onnx import export_scorer
from recgen.promotion import GateRefused, pin, promote, prune
from recgen.repository import Manifest, VersionWriter, write_catalog
from worker.foldin import FoldIn

LOG = logging.getLogger(__name__)

# Candidates tried on a validation split (each user's second-to-last item);
# the test split (last item) is only used once, for the reported numbers.
TUNING_GRID = [
    ALSParams(factors=32, reg=0.01, alpha=1.0),
    ALSParams(factors=32, reg=0.1, alpha=2.0),
    ALSParams(factors=64, reg=0.05, alpha=1.0),
    ALSParams(factors=64, reg=0.5, alpha=3.0),
]


@dataclass
class ExportOptions:
    llm: str | None = None  # None: the default SmolLM2 from the wheel
    with_llm: bool = True
    with_encoder: bool = True
    with_context: bool = True  # learn what request context adds (export/context.py)
    quantize: str = "int8"
    factors: int | None = None  # None: tuned
    reg: float | None = None
    alpha: float | None = None
    iterations: int = 15
    recall_target: float = 0.95
    exact_max_items: int | None = None
    seed: int = 0
    progress: bool = True
    evaluate_ease: bool = True
    wheels_dir: Path = field(default_factory=lambda: Path(".cache/wheels"))


def _step(name: str) -> float:
    LOG.info("export: %s", name)
    return time.perf_counter()


def choose_params(
    ds: Dataset, opts: ExportOptions, keep: dict[str, np.ndarray] | None = None
) -> tuple[ALSParams, list[dict[str, Any]]]:
    """Fixed params if all given; else the best of the grid on validation NDCG@10.

    keep: if given, receives the chosen model's item factors as "validation" (reused
    by the context step instead of training again).
    """
    grid = TUNING_GRID
    if opts.factors is not None or opts.reg is not None or opts.alpha is not None:
        base = ALSParams()
        grid = [
            ALSParams(
                factors=opts.factors or base.factors,
                reg=base.reg if opts.reg is None else opts.reg,
                alpha=base.alpha if opts.alpha is None else opts.alpha,
            )
        ]
    grid = [ALSParams(p.factors, p.reg, p.alpha, opts.iterations, opts.seed) for p in grid]
    if len(grid) == 1:
        return grid[0], []
    outer = leave_last_out(ds)
    val = leave_last_out(ds, outer.train_rows)  # hold out the second-to-last item
    trials = []
    trained = []
    for p in grid:
        m = train_als(ds.user[val.train_rows], ds.item[val.train_rows], ds.n_users, ds.n_items, p)
        trained.append(m.item_factors)
        res = evaluate_mf(ds, val, m.item_factors, p.reg, p.alpha)
        trials.append({"params": p.to_json(), "validation": res})
        LOG.info("tuning %s: validation NDCG@10 %.4f HR@10 %.4f", p, res["ndcg@10"], res["hit_rate@10"])
    best = max(range(len(grid)), key=lambda i: trials[i]["validation"]["ndcg@10"])
    if keep is not None:
        keep["validation"] = trained[best]
    return grid[best], trials


def evaluate_all(
    ds: Dataset, params: ALSParams, opts: ExportOptions, keep: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    split = leave_last_out(ds)
    m = train_als(
        ds.user[split.train_rows],
        ds.item[split.train_rows],
        ds.n_users,
        ds.n_items,
        params,
        progress=opts.progress,
    )
    if keep is not None:
        keep["test"] = m.item_factors  # reused by the context step
    out: dict[str, Any] = {
        "protocol": "temporal leave-last-one-out, all ratings positive, ties in file order, "
        "all unseen items ranked",
        "mf": evaluate_mf(ds, split, m.item_factors, params.reg, params.alpha),
        "popularity": evaluate_popularity(ds, split),
    }
    if opts.evaluate_ease and ds.n_items <= 20_000:
        out["ease"] = evaluate_ease(ds, split)
    return out


def export_version(ds: Dataset, root: Path, opts: ExportOptions) -> Path:
    """Build one complete model version from a dataset; returns its path."""
    started = time.perf_counter()
    t = _step("tuning ALS on a validation split")
    split_factors: dict[str, np.ndarray] = {}  # the held-out models' item factors, for the context step
    params, trials = choose_params(ds, opts, split_factors)
    LOG.info("chosen %s (%.1f s)", params, time.perf_counter() - t)

    t = _step("evaluating on held-out data")
    metrics: dict[str, Any] = {"quality": evaluate_all(ds, params, opts, split_factors)}
    metrics["quality"]["tuning"] = trials
    LOG.info(
        "held-out quality (%.1f s): %s",
        time.perf_counter() - t,
        json.dumps({k: v for k, v in metrics["quality"].items() if k != "tuning"}),
    )

    t = _step("training the served model on all data")
    model = train_als(ds.user, ds.item, ds.n_users, ds.n_items, params, progress=opts.progress)
    factors = model.item_factors
    popularity = np.bincount(ds.item, minlength=ds.n_items).astype(np.float32)

    with VersionWriter(root) as w:
        write_catalog(w.path / "catalog.jsonl", ds.items)
        np.save(w.path / "item_factors.npy", factors)
        np.save(w.path / "item_popularity.npy", popularity)
        export_scorer(params.factors, w.path / "scorer.onnx")

        t = _step("building the FAISS index")
        hist = user_histories(ds, np.arange(len(ds)), params.alpha)
        queries = FoldIn(factors, params.reg).user_vectors([h for h in hist if len(h[0])][:2000])
        exact_max = EXACT_MAX_ITEMS if opts.exact_max_items is None else opts.exact_max_items
        index, choice = build_index(
            factors, queries, recall_target=opts.recall_target, exact_max_items=exact_max
        )
        save_index(index, str(w.path / "items.faiss"))
        metrics["index"] = choice.to_json()

        dims: dict[str, int] = {"factors": params.factors}
        extra_params: dict[str, Any] = {}
        if opts.with_encoder:
            t = _step("exporting the content encoder and its map into MF space")
            from export.content_step import export_content

            enc = export_content(ds, factors, w.path / "encoder", progress=opts.progress)
            dims["encoder"] = int(enc["dim"])
            metrics["content_map"] = enc["report"]
        if opts.with_context:
            t = _step("learning what request context adds (ablation on held-out data)")
            from export.context import ContextOptions, learn_context

            enc_dir = w.path / "encoder" if opts.with_encoder else None
            ctx_opts = ContextOptions(seed=opts.seed)
            emb = enc["embeddings"] if opts.with_encoder else None
            metrics["context"] = learn_context(
                ds, params, w.path / "context", enc_dir, ctx_opts, emb, split_factors
            )
        if opts.with_llm:
            t = _step("exporting the language model")
            from export.llm_step import export_llm_for_catalog

            llm = export_llm_for_catalog(ds, opts, w.path / "llm", factors, params.reg, params.alpha)
            metrics["llm"] = llm.get("quality", {})
            extra_params["llm"] = {k: llm[k] for k in ("source", "architecture", "precision") if k in llm}

        manifest = Manifest(
            version=w.version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            dataset={
                "source": ds.source,
                "fingerprint": ds.fingerprint,
                "n_users": ds.n_users,
                "n_items": ds.n_items,
                "n_interactions": len(ds),
                "cleaning": ds.report.to_json(),
            },
            dims=dims,
            metrics=metrics,
            params={"mf": params.to_json(), "index": {"kind": choice.kind, **choice.params}, **extra_params},
        )
        path = w.commit(manifest)
    LOG.info("export finished in %.1f s: %s", time.perf_counter() - started, path)
    return path


def _summary(path: Path) -> str:
    m = json.loads((path / "manifest.json").read_text())
    q = m["metrics"]["quality"]
    lines = [
        f"model version {m['version']} at {path}",
        f"  data: {m['dataset']['source']}: {m['dataset']['n_users']} users, "
        f"{m['dataset']['n_items']} items, {m['dataset']['n_interactions']} interactions",
        f"  MF: {m['params']['mf']}",
        "  held-out (temporal leave-last-one-out):",
        f"    {'model':<12}{'HR@10':>8}{'NDCG@10':>9}{'cov@10':>8}",
    ]
    for name in ("mf", "ease", "popularity"):
        if name in q:
            r = q[name]
            lines.append(
                f"    {name:<12}{r['hit_rate@10']:>8.4f}{r['ndcg@10']:>9.4f}{r['coverage@10']:>8.3f}"
            )
    ix = m["metrics"]["index"]
    shown = {k: v for k, v in ix["params"].items() if k != "measured"}
    lines.append(f"  index: {ix['kind']} {shown} recall@100 {ix['recall_at_100']:.3f}")
    if "context" in m["metrics"]:
        feats = m["metrics"]["context"]["features"]
        lines.append(
            "  context (warm/cold): " + "; ".join(f"{f} {v['warm']}/{v['cold']}" for f, v in feats.items())
        )
    if "llm" in m["metrics"]:
        lines.append(f"  llm: {json.dumps(m['metrics']['llm'])}")
    return "\n".join(lines)


def run_export(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch weights from a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    opts = ExportOptions(
        llm=args.llm,
        with_llm=not args.no_llm,
        with_encoder=not args.no_encoder,
        quantize=args.quantize,
        factors=args.factors,
        reg=args.reg,
        alpha=args.alpha,
        iterations=args.iterations,
        recall_target=args.recall_target,
        seed=args.seed,
        progress=not args.quiet,
        wheels_dir=Path(args.wheels),
    )
    try:
        if bool(args.interactions) != bool(args.items):
            raise DataError("--interactions and --items go together")
        ds = (
            load_files(args.interactions, args.items)
            if args.interactions
            else load_movielens100k(args.wheels)
        )
    except DataError as e:
        LOG.error("%s", e)
        print(f"recgen export: {e}")
        return 2
    if getattr(args, "feedback", None):
        from export.feedback_data import fold_feedback, load_feedback

        if "://" not in args.feedback and not Path(args.feedback).is_file():
            print(f"recgen export: --feedback {args.feedback}: no such state store file")
            return 2
        ds = fold_feedback(ds, *load_feedback(args.feedback))
    LOG.info("cleaning report: %s", json.dumps(ds.report.to_json()))
    root = Path(args.models)
    pin(root)  # workers keep serving what they serve until the gate says otherwise
    path = export_version(ds, root, opts)
    print(_summary(path))
    if getattr(args, "no_promote", False):
        print(f"not promoted (--no-promote): `recgen reload --models {root} --version {path.name}`")
        return 0
    try:
        d = promote(root, path.name, force=args.force, tolerance=args.tolerance)
        print(f"promoted: SERVING -> {d.version} ({d.reason})")
    except GateRefused as e:
        print(f"not promoted: {e}")
    removed = prune(root, args.keep)
    if removed:
        print(f"pruned old versions: {', '.join(removed)}")
    return 0
