"""`recgen export`: data → cleaned dataset → MF → scorer, index, encoder, LLM → version.

Reads the steps top-down; each step is its own module. Everything is built
inside a hidden temporary version directory and made visible only when the
manifest has been written (recgen.repository.VersionWriter), so an error or
a crash at any step leaves no version that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from export.budget import BudgetError
from export.data import DataError, Dataset, load_files, load_movielens100k
from export.factors_import import QUALITY_NOTE as IMPORTED_QUALITY_NOTE
from export.factors_import import ImportedFactors
from export.index import EXACT_MAX_ITEMS, build_index, save_index
from export.mf import train_als
from export.model_selection import choose_params, evaluate_all
from export.progress import ExportProgress, display_mode, plan, rows_guess
from export.scorer_onnx import export_scorer
from recgen.config.export import ExportConfig
from recgen.core.foldin import FoldIn
from recgen.core.formats import (
    CONTEXT_DIR,
    ENCODER_DIR,
    INDEX_FILE,
    ITEM_FACTORS_FILE,
    ITEM_POPULARITY_FILE,
    LLM_DIR,
    SCORER_FILE,
)
from recgen.core.user_history import (
    HALF_LIFE_DAYS,
    HISTORY_CAP,
    USERS_DIR,
    write_user_histories,
)
from recgen.promotion import GateRefused, pin, promote, prune
from recgen.repository import Manifest, VersionWriter, write_catalog

LOG = logging.getLogger(__name__)


def _step(progress: ExportProgress, key: str) -> float:
    if key in progress:  # not planned: a no-op here (tuning with the parameters given)
        progress.start(key)  # logs the stage (log mode) or shows it on the bar
    return time.perf_counter()


def _progress(opts: ExportConfig, rows: int, imported: bool) -> ExportProgress:
    """The overall display: a bar on a terminal (or with --progress), else one line per stage."""
    forced = opts.progress_bar
    grid = opts.factors is None and opts.reg is None and opts.alpha is None  # else no tuning (choose_params)
    steps = plan(
        tune=grid and not imported,
        train=not imported,
        encoder=opts.with_encoder,
        context=opts.with_context,
        llm=opts.with_llm,
    )
    mode = display_mode(forced) if opts.progress or forced else "log"
    return ExportProgress(steps, rows, mode=mode)


def export_version(
    ds: Dataset,
    root: Path,
    opts: ExportConfig,
    imported: ImportedFactors | None = None,
    progress: ExportProgress | None = None,
) -> Path:
    """Build one complete model version from a dataset; returns its path.

    imported: item factors trained elsewhere (export/factors_import.py): no tuning or training;
    they are evaluated as they are, and the context step reuses them for its splits.
    progress: the overall display run_export started (it showed reading the data); else one
    is made here.
    """
    if progress is None:
        progress = _progress(opts, len(ds), imported is not None)
    progress.rescale(len(ds))
    try:
        path = _export_version(ds, root, opts, imported, progress)
    finally:
        progress.close()
    return path


def _export_version(
    ds: Dataset, root: Path, opts: ExportConfig, imported: ImportedFactors | None, progress: ExportProgress
) -> Path:
    started = time.perf_counter()
    split_factors: dict[str, np.ndarray] = {}  # the held-out models' item factors, for the context step
    if imported is None:
        t = _step(progress, "tune")
        params, trials = choose_params(ds, opts, split_factors)
        LOG.info("chosen %s (%.1f s)", params, time.perf_counter() - t)
    else:
        params, trials = imported.params, []
        split_factors["validation"] = imported.item_factors
        LOG.info("imported %s from %s: no tuning or training", params, imported.source)

    t = _step(progress, "evaluate")
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
        t = _step(progress, "train")
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
        t = _step(progress, "histories")
        write_catalog(w.path / "catalog.jsonl", ds.items)
        held = write_user_histories(w.path / USERS_DIR, ds.users, ds.user, ds.item, ds.timestamp)
        extra_params["users"] = {
            **held.counts(),
            "history_cap": HISTORY_CAP,
            "half_life_days": HALF_LIFE_DAYS,
            "data_end": float(ds.timestamp.max()) if len(ds) else float("-inf"),
            "forgotten_through": opts.forgotten_through,
        }
        np.save(w.path / ITEM_FACTORS_FILE, factors)
        np.save(w.path / ITEM_POPULARITY_FILE, popularity)
        export_scorer(params.factors, w.path / SCORER_FILE)

        t = _step(progress, "index")
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
        save_index(index, str(w.path / INDEX_FILE))
        metrics["index"] = choice.to_json()

        dims: dict[str, int] = {"factors": params.factors}
        if opts.with_encoder:
            t = _step(progress, "encoder")
            from export.content_step import export_content

            enc = export_content(
                ds, factors, w.path / ENCODER_DIR, progress=opts.progress, reg=params.reg, alpha=params.alpha
            )
            dims["encoder"] = int(enc["dim"])
            metrics["content_map"] = enc["report"]
        if opts.with_context:
            t = _step(progress, "context")
            from export.context import ContextOptions, learn_context

            enc_dir = w.path / ENCODER_DIR if opts.with_encoder else None
            ctx_opts = ContextOptions(seed=opts.seed)
            emb = enc["embeddings"] if opts.with_encoder else None
            metrics["context"] = learn_context(
                ds, params, w.path / CONTEXT_DIR, enc_dir, ctx_opts, emb, split_factors
            )
        if opts.with_llm:
            t = _step(progress, "llm")
            from export.llm.step import export_llm_for_catalog

            llm = export_llm_for_catalog(ds, opts, w.path / LLM_DIR, factors, params.reg, params.alpha)
            metrics["llm"] = llm.get("quality", {})
            extra_params["llm"] = {k: llm[k] for k in ("source", "architecture", "precision") if k in llm}

        t = _step(progress, "commit")
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
    progress.finish()
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


def _imported_factors(cfg: ExportConfig, ds: Dataset) -> ImportedFactors | None:
    """`--factors-from`: factors trained elsewhere, on ds's catalog (None: train here)."""
    from export.factors_import import FactorsError, load_factors

    if not cfg.factors_from:
        return None  # ExportConfig refused npy flags without --factors-from
    imported = load_factors(
        cfg.factors_from,
        ds,
        fmt=cfg.factors_format,
        reg=cfg.reg,
        alpha=cfg.alpha,
        item_ids=cfg.item_ids,
        user_factors=cfg.user_factors,
        user_ids=cfg.user_ids,
    )
    if cfg.factors is not None and cfg.factors != imported.params.factors:
        raise FactorsError(f"--factors {cfg.factors}: {cfg.factors_from} has {imported.params.factors}")
    return imported


def run_export(cfg: ExportConfig) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch weights from a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    progress = _progress(cfg, rows_guess([cfg.interactions]), bool(cfg.factors_from))
    with progress:  # closed on every way out; export_version finishes it
        progress.start("read")
        return _run_export(cfg, progress)


def _run_export(cfg: ExportConfig, progress: ExportProgress) -> int:
    try:
        ds = (
            load_files(cfg.interactions, cfg.items)
            if cfg.interactions and cfg.items
            else load_movielens100k(cfg.wheels_dir)
        )
    except DataError as e:
        LOG.error("%s", e)
        print(f"recgen export: {e}")
        return 2
    if cfg.feedback:
        from export.feedback_data import fold_feedback, load_feedback

        if "://" not in cfg.feedback and not Path(cfg.feedback).is_file():
            print(f"recgen export: --feedback {cfg.feedback}: no such state store file")
            return 2
        events, changes, forgotten = load_feedback(cfg.feedback)
        ds = fold_feedback(ds, events, changes, forgotten)
        cfg = replace(cfg, forgotten_through=max(forgotten.values(), default=0.0))
    LOG.info("cleaning report: %s", json.dumps(ds.report.to_json()))
    try:
        imported = _imported_factors(cfg, ds)
    except DataError as e:
        LOG.error("%s", e)
        print(f"recgen export: {e}")
        return 2
    root = Path(cfg.models)
    pin(root)  # workers keep serving what they serve until the gate says otherwise
    try:
        path = export_version(ds, root, cfg, imported, progress)
    except BudgetError as e:  # a stage that cannot fit says so before its work, with what to change
        LOG.error("%s", e)
        print(f"recgen export: {e}")
        return 2
    print(_summary(path))
    if not cfg.promote:
        print(f"not promoted (--no-promote): `recgen reload --models {root} --version {path.name}`")
        return 0
    try:
        d = promote(root, path.name, force=cfg.force, tolerance=cfg.tolerance)
        print(f"promoted: SERVING -> {d.version} ({d.reason})")
    except GateRefused as e:
        print(f"not promoted: {e}")
    removed = prune(root, cfg.keep)
    if removed:
        print(f"pruned old versions: {', '.join(removed)}")
    return 0
