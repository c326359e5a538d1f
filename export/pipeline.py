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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from export.budget import BudgetError
from export.data import DataError, Dataset, load_files, load_movielens100k
from export.ease import evaluate_ease
from export.evaluate import (
    Histories,
    evaluate_mf,
    evaluate_popularity,
    leave_last_out,
    sample_split,
)
from export.factors_import import QUALITY_NOTE as IMPORTED_QUALITY_NOTE
from export.factors_import import ImportedFactors
from export.index import EXACT_MAX_ITEMS, build_index, save_index
from export.mf import ALSParams, train_als
from export.options import ExportOptions
from export.scorer_onnx import export_scorer
from recgen.core.foldin import FoldIn
from recgen.core.user_history import (
    HALF_LIFE_DAYS,
    HISTORY_CAP,
    USERS_DIR,
    HistoryArrays,
    write_user_histories,
)
from recgen.promotion import GateRefused, pin, promote, prune
from recgen.repository import Manifest, VersionWriter, write_catalog

LOG = logging.getLogger(__name__)

# Candidates tried on a validation split (each user's second-to-last item);
# the test split (last item) is only used once, for the reported numbers.
# All near 32 factors with light L2 and low confidence: `make quality` (docs/quality.md) measured
# that 64- and 128-factor models, which the noisy one-item validation picked in 2 of 4 exports,
# lose 11-25 % NDCG@10 on a per-user random 80/20 split (0.31-0.37 vs 0.41 on ML-100K, even at
# λ 5) and gain nothing on leave-last-one-out (0.071-0.076 vs 0.077-0.078); 32 factors also
# train in a fraction of the time.
TUNING_GRID = [
    ALSParams(factors=32, reg=0.01, alpha=1.0),
    ALSParams(factors=32, reg=0.1, alpha=2.0),
    ALSParams(factors=32, reg=0.05, alpha=1.0),
    ALSParams(factors=32, reg=0.1, alpha=1.0),
    ALSParams(factors=24, reg=0.05, alpha=1.0),
]


def _step(name: str) -> float:
    LOG.info("export: %s", name)
    return time.perf_counter()


def held_histories(ds: Dataset, rows: np.ndarray) -> HistoryArrays:
    """The histories a version built from these rows holds (capped, newest first)."""
    return HistoryArrays.build(ds.user[rows], ds.item[rows], ds.timestamp[rows], ds.n_users)


def served(held: HistoryArrays, alpha: float) -> Histories:
    """Each user's fold-in input exactly as a worker computes it for a known user (decay from
    the user's newest event, the newest HISTORY_CAP events): offline numbers = served numbers."""
    return lambda users: [held.fold_in(int(u), alpha) for u in users]


def choose_params(
    ds: Dataset, opts: ExportOptions, keep: dict[str, np.ndarray] | None = None
) -> tuple[ALSParams, list[dict[str, Any]]]:
    """Fixed params if all given; else the best of the grid on validation NDCG@10.

    Each trial ranks a fixed sample (seed opts.seed) of at most MAX_TUNING_USERS validation
    users (export.evaluate.sample_split), so tuning cost does not grow with the user count;
    each trial's result records the metrics' standard errors over that sample.
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
    val = sample_split(val, seed=opts.seed)
    val_held = held_histories(ds, val.train_rows)
    trials = []
    trained = []
    for i, p in enumerate(grid, 1):
        if opts.progress:
            LOG.info("tuning trial %d/%d: %s on %d validation users", i, len(grid), p, len(val.test_user))
        m = train_als(
            ds.user[val.train_rows],
            ds.item[val.train_rows],
            ds.n_users,
            ds.n_items,
            p,
            progress=opts.progress,
            max_memory=opts.max_memory,
        )
        trained.append(m.item_factors)
        res = evaluate_mf(
            ds,
            val,
            m.item_factors,
            p.reg,
            p.alpha,
            histories=served(val_held, p.alpha),
            max_memory=opts.max_memory,
            progress=opts.progress,
        )
        trials.append({"params": p.to_json(), "validation": res})
        LOG.info(
            "tuning %s: validation NDCG@10 %.4f ± %.4f HR@10 %.4f ± %.4f (%d users)",
            p,
            res["ndcg@10"],
            res["ndcg@10_se"],
            res["hit_rate@10"],
            res["hit_rate@10_se"],
            res["users"],
        )
    best = max(range(len(grid)), key=lambda i: trials[i]["validation"]["ndcg@10"])
    if keep is not None:
        keep["validation"] = trained[best]
    return grid[best], trials


def evaluate_all(
    ds: Dataset,
    params: ALSParams,
    opts: ExportOptions,
    keep: dict[str, np.ndarray] | None = None,
    imported: np.ndarray | None = None,
) -> dict[str, Any]:
    """imported: item factors trained elsewhere on all data, evaluated as they are (no training)."""
    split = leave_last_out(ds)
    if imported is None:
        item_factors = train_als(
            ds.user[split.train_rows],
            ds.item[split.train_rows],
            ds.n_users,
            ds.n_items,
            params,
            progress=opts.progress,
            max_memory=opts.max_memory,
        ).item_factors
    else:
        item_factors = imported
    if keep is not None:
        keep["test"] = item_factors  # reused by the context step
    limits: dict[str, Any] = {"max_memory": opts.max_memory, "progress": opts.progress}
    out: dict[str, Any] = {
        "protocol": "temporal leave-last-one-out, all ratings positive, ties in file order, "
        "all unseen items ranked",
        "mf": evaluate_mf(
            ds,
            split,
            item_factors,
            params.reg,
            params.alpha,
            histories=served(held_histories(ds, split.train_rows), params.alpha),
            **limits,
        ),
        "popularity": evaluate_popularity(ds, split, **limits),
    }
    if opts.evaluate_ease:
        try:  # a baseline only: where it does not fit, say so and go on
            out["ease"] = evaluate_ease(ds, split, max_seconds=opts.ease_max_seconds, **limits)
        except BudgetError as e:
            LOG.warning("EASE baseline skipped: %s", e)
            out["ease_skipped"] = str(e)
    return out


def export_version(
    ds: Dataset, root: Path, opts: ExportOptions, imported: ImportedFactors | None = None
) -> Path:
    """Build one complete model version from a dataset; returns its path.

    imported: item factors trained elsewhere (export/factors_import.py): no tuning or training;
    they are evaluated as they are, and the context step reuses them for its splits.
    """
    started = time.perf_counter()
    split_factors: dict[str, np.ndarray] = {}  # the held-out models' item factors, for the context step
    if imported is None:
        t = _step("tuning ALS on a validation split")
        params, trials = choose_params(ds, opts, split_factors)
        LOG.info("chosen %s (%.1f s)", params, time.perf_counter() - t)
    else:
        params, trials = imported.params, []
        split_factors["validation"] = imported.item_factors
        LOG.info("imported %s from %s: no tuning or training", params, imported.source)

    t = _step("evaluating on held-out data")
    given = None if imported is None else imported.item_factors
    metrics: dict[str, Any] = {"quality": evaluate_all(ds, params, opts, split_factors, given)}
    metrics["quality"]["tuning"] = trials
    if imported is not None:
        metrics["quality"]["note"] = IMPORTED_QUALITY_NOTE
        metrics["factors_import"] = imported.report
    LOG.info(
        "held-out quality (%.1f s): %s",
        time.perf_counter() - t,
        json.dumps({k: v for k, v in metrics["quality"].items() if k != "tuning"}),
    )

    if imported is None:
        t = _step("training the served model on all data")
        model = train_als(
            ds.user,
            ds.item,
            ds.n_users,
            ds.n_items,
            params,
            progress=opts.progress,
            max_memory=opts.max_memory,
        )
        factors = model.item_factors
    else:
        factors = imported.item_factors
    popularity = np.bincount(ds.item, minlength=ds.n_items).astype(np.float32)

    extra_params: dict[str, Any] = {}
    with VersionWriter(root) as w:
        write_catalog(w.path / "catalog.jsonl", ds.items)
        t = _step("writing the training users' histories")
        held = write_user_histories(w.path / USERS_DIR, ds.users, ds.user, ds.item, ds.timestamp)
        extra_params["users"] = {
            **held.counts(),
            "history_cap": HISTORY_CAP,
            "half_life_days": HALF_LIFE_DAYS,
            "data_end": float(ds.timestamp.max()) if len(ds) else float("-inf"),
            "forgotten_through": opts.forgotten_through,
        }
        np.save(w.path / "item_factors.npy", factors)
        np.save(w.path / "item_popularity.npy", popularity)
        export_scorer(params.factors, w.path / "scorer.onnx")

        t = _step("building the FAISS index")
        # Sample queries: 2,000 users' vectors exactly as the workers will fold them in.
        active = np.flatnonzero(np.diff(held.hist_indptr) > 0)
        sample = np.random.default_rng(opts.seed).permutation(active)[:2000]
        queries = FoldIn(factors, params.reg).user_vectors(
            [held.fold_in(int(u), params.alpha) for u in sample]
        )
        exact_max = EXACT_MAX_ITEMS if opts.exact_max_items is None else opts.exact_max_items
        index, choice = build_index(
            factors, queries, recall_target=opts.recall_target, exact_max_items=exact_max
        )
        save_index(index, str(w.path / "items.faiss"))
        metrics["index"] = choice.to_json()

        dims: dict[str, int] = {"factors": params.factors}
        if opts.with_encoder:
            t = _step("exporting the content encoder and its map into MF space")
            from export.content_step import export_content

            enc = export_content(
                ds, factors, w.path / "encoder", progress=opts.progress, reg=params.reg, alpha=params.alpha
            )
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
            from export.llm.step import export_llm_for_catalog

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
            params={
                "mf": (imported or params).to_json(),
                "index": {"kind": choice.kind, **choice.params},
                **extra_params,
            },
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
        "  held-out (temporal leave-last-one-out):" + (f" {q['note']}" if "note" in q else ""),
        f"    {'model':<12}{'HR@10':>8}{'NDCG@10':>9}{'cov@10':>8}",
    ]
    for name in ("mf", "ease", "popularity"):
        if name in q:
            r = q[name]
            lines.append(
                f"    {name:<12}{r['hit_rate@10']:>8.4f}{r['ndcg@10']:>9.4f}{r['coverage@10']:>8.3f}"
            )
    if "ease_skipped" in q:
        lines.append(f"    {'ease':<12}skipped: {q['ease_skipped']}")
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


def _imported_factors(args: argparse.Namespace, ds: Dataset) -> ImportedFactors | None:
    """`--factors-from`: factors trained elsewhere, on ds's catalog (None: train here)."""
    from export.factors_import import FactorsError, load_factors

    npy_flags = [f for f in ("item_ids", "user_factors", "user_ids") if getattr(args, f, None)]
    if not getattr(args, "factors_from", None):
        if npy_flags:
            raise FactorsError(f"--{npy_flags[0].replace('_', '-')} goes with --factors-from")
        return None
    imported = load_factors(
        args.factors_from,
        ds,
        fmt=args.factors_format,
        reg=args.reg,
        alpha=args.alpha,
        item_ids=args.item_ids,
        user_factors=args.user_factors,
        user_ids=args.user_ids,
    )
    if args.factors is not None and args.factors != imported.params.factors:
        raise FactorsError(f"--factors {args.factors}: {args.factors_from} has {imported.params.factors}")
    return imported


def run_export(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch weights from a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    opts = ExportOptions(
        llm=args.llm,
        with_llm=not args.no_llm,
        with_encoder=not args.no_encoder,
        with_context=not args.no_context,
        quantize=args.quantize,
        factors=args.factors,
        reg=args.reg,
        alpha=args.alpha,
        iterations=args.iterations,
        recall_target=args.recall_target,
        seed=args.seed,
        progress=not args.quiet,
        max_memory=args.max_memory,
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
        events, changes, forgotten = load_feedback(args.feedback)
        ds = fold_feedback(ds, events, changes, forgotten)
        opts.forgotten_through = max(forgotten.values(), default=0.0)
    LOG.info("cleaning report: %s", json.dumps(ds.report.to_json()))
    try:
        imported = _imported_factors(args, ds)
    except DataError as e:
        LOG.error("%s", e)
        print(f"recgen export: {e}")
        return 2
    root = Path(args.models)
    pin(root)  # workers keep serving what they serve until the gate says otherwise
    try:
        path = export_version(ds, root, opts, imported)
    except BudgetError as e:  # a stage that cannot fit says so before its work, with what to change
        LOG.error("%s", e)
        print(f"recgen export: {e}")
        return 2
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
