"""New items: do items known only by their text reach the users they were made for?

Protocol (MovieLens-100K by default, fixed seed):

- 10 % of the items are "new": every interaction with them is dropped from
  training. The rest are "trained" items; each user's last interaction with a
  trained item (by time) is held out too, for the usual leave-last-out HR@10.
- MF (`export.mf.train_als`) is trained on what is left, the content map and
  its norm calibration are fitted on the trained items exactly as export does
  (`export.content_step.fit_item_content_map`, MiniLM embeddings from the
  packaged encoder as `export.encoder` exports it), and the new items join the
  catalog with the vectors of each variant below.
- Every user's vector is the fold-in of their training interactions against
  the trained factors (the worker's Gram matrix: new rows do not count); all
  catalog items are ranked by inner product, training items excluded.

Metrics, k = 10:

- ``new_hr`` / ``new_recall``: over users who interacted with a new item, whether
  any of those items is in the top k / the share of them (of at most k) that is;
- ``old_hr``: leave-last-out HR@k on trained items over all users: what showing
  new items costs the rest of the answer;
- ``new_share``: share of all users' top-k slots given to new items, beside
  ``new_share_true``, the new items' share of all interactions.

Variants: ``raw`` (the map as before); ``calibrated`` (what export now writes:
the raw vectors times the scale fitted on held-out trained items so that their
mapped vectors reach fold-in users' top k as often as their true factors do,
consumed pairs left out; `export.content_map.fit_exposure_scale`);
``norm_median`` / ``norm_quantiles`` (the rejected design: make mapped norms
match the trained factors' norms, by one factor median onto median, or by
quantile mapping); ``raw_x<c>`` (a fixed factor: the trade-off curve);
``category_mean`` (the worker's no-encoder fallback); ``slot_<t>+<base>`` (one of
k reserved: if no new item made the top k, the k-th place goes to the new item
of highest cosine to the user if that cosine reaches t); ``slot_random+raw`` (a
random unseen new item in that slot: a content-free prior) and
``slot_oracle_popular+raw`` (the unseen new item with the most held-out
interactions: it reads the test data, an upper reference for "show what will
be popular", not a deployable method).

``star_wars_case`` runs the issue's example through the real worker path: an
exported version (encoder and calibration), `LoadedModel`, `LiveCatalog` upsert,
`Ranker.rank`.

    python -m tools.new_items [--seeds 0,1,2] [--out FILE.json] [--no-worker-case]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from export.content_step import calibration_users, fit_item_content_map
from export.data import Dataset, load_movielens100k
from export.evaluate import fold_in, leave_last_out, user_histories
from export.mf import ALSParams, train_als
from recgen.core.content_map import apply_content_map
from recgen.core.foldin import FoldIn
from recgen.repository import CatalogItem, item_text

LOG = logging.getLogger(__name__)

K = 10
NEW_FRAC = 0.1
SEED = 0
# What export's tuning picks on MovieLens-100K (docs/eval.md).
PARAMS = ALSParams(factors=32, reg=0.01, alpha=1.0, iterations=15, seed=0)
SLOT_COSINES = (0.0, 0.3, 0.5)
SCALES = (1.2, 1.4, 1.6, 1.8, 2.0)  # raw mapped vectors times a fixed factor: the trade-off curve

STAR_WARS = CatalogItem(
    "sw-new-dawn",
    "Star Wars: A New Dawn (2026)",
    "space opera sequel with Jedi, the Force and the Empire",
    ("Action", "Sci-Fi"),
)
STAR_WARS_HISTORY = (
    "Return of the Jedi (1983)",
    "Empire Strikes Back, The (1980)",
    "Star Trek: First Contact (1996)",
)


def encode_items(items: list[CatalogItem], cache: Path | None = None) -> np.ndarray:
    """MiniLM embeddings of the items' texts, through the ONNX encoder export writes."""
    from export.encoder import export_encoder
    from worker.encoder import TextEncoder

    texts = [item_text(it) for it in items]
    if cache is not None and cache.is_file():
        emb = np.load(cache)
        if emb.shape[0] == len(texts):
            return emb
    with tempfile.TemporaryDirectory() as d:
        export_encoder(Path(d), progress=False)
        emb = TextEncoder(Path(d), threads=2).encode(texts)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, emb)
    return emb


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _category_means(ds: Dataset, factors: np.ndarray, trained: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The worker's fallback without an encoder (`worker.live_catalog.stand_in_factors`)."""
    cats: dict[str, np.ndarray] = {}
    for i, it in enumerate(ds.items):
        for c in it.categories:
            cats.setdefault(c.lower(), np.zeros(ds.n_items, bool))[i] = True
    out = np.empty((len(rows), factors.shape[1]), np.float32)
    for j, r in enumerate(rows):
        mask = np.zeros(ds.n_items, bool)
        for c in ds.items[r].categories:
            mask |= cats[c.lower()]
        mask &= trained
        out[j] = factors[mask].mean(axis=0) if mask.any() else factors[trained].mean(axis=0)
    return out


def measure_new_items(
    ds: Dataset,
    *,
    embeddings: np.ndarray | None = None,
    new_frac: float = NEW_FRAC,
    seed: int = SEED,
    params: ALSParams = PARAMS,
    k: int = K,
    slot_cosines: tuple[float, ...] = SLOT_COSINES,
    scales: tuple[float, ...] = SCALES,
    embedding_cache: Path | None = None,
) -> dict[str, Any]:
    """The new-item protocol of the module docstring; returns the table as a dict."""
    t0 = time.perf_counter()
    emb = encode_items(ds.items, embedding_cache) if embeddings is None else np.asarray(embeddings)
    rng = np.random.default_rng(seed)
    n = ds.n_items
    is_new = np.zeros(n, bool)
    is_new[rng.choice(n, int(round(new_frac * n)), replace=False)] = True
    new_rows = np.flatnonzero(is_new)
    split = leave_last_out(ds, np.flatnonzero(~is_new[ds.item]))
    train = split.train_rows
    model = train_als(ds.user[train], ds.item[train], ds.n_users, n, params)
    factors = model.item_factors  # new rows: 0 (no interactions), so the fold-in Gram is the trained one's
    counts = np.bincount(ds.item[train], minlength=n)
    # The export recipe: fold-in users of the training data, map + calibration scale.
    cal_users = calibration_users(ds, factors, params.reg, params.alpha, rows=train)
    w_map, calibration, report = fit_item_content_map(emb, factors, counts, cal_users)
    assert calibration is not None
    # The scale export gets where it does not know the version's fold-in parameters.
    other_scales = {}
    for reg, alpha in ((0.1, 2.0), (0.05, 2.0)):
        u = calibration_users(ds, factors, reg, alpha, rows=train)
        rep_other = fit_item_content_map(emb, factors, counts, u)[2]
        other_scales[f"reg={reg:g},alpha={alpha:g}"] = rep_other["calibration"]["scale"]
    trained = ~is_new
    fitted = counts >= 5
    raw = apply_content_map(w_map, emb[new_rows])
    # The rejected design, norm matching: (1) one factor, median mapped norm onto the median
    # trained norm; (2) quantile mapping of the norm distributions (trained in-sample mapped
    # norms as the source). Both aimed at the items the map is fitted on.
    fit_norms = np.linalg.norm(factors[fitted], axis=1)
    norm_scale = float(np.median(fit_norms) / report["norms"]["heldout_mapped_median"])
    qs = np.linspace(0.01, 0.99, 50)
    src = np.quantile(np.linalg.norm(apply_content_map(w_map, emb[fitted]), axis=1), qs)
    raw_norms = np.linalg.norm(raw, axis=1)
    quantile_norms = np.interp(raw_norms, src, np.quantile(fit_norms, qs))
    vectors = {
        "raw": raw,
        "calibrated": calibration.apply(raw),
        "norm_median": raw * np.float32(norm_scale),
        "norm_quantiles": raw * (quantile_norms / np.maximum(raw_norms, 1e-12))[:, None].astype(np.float32),
        "category_mean": _category_means(ds, factors, trained, new_rows),
        **{f"raw_x{c:g}": raw * np.float32(c) for c in scales},
    }

    # Users: fold-in of their training interactions, as the worker computes them.
    hist = user_histories(ds, train, params.alpha)
    users = fold_in(FoldIn(factors, params.reg), hist)  # (U, d)
    seen = np.zeros((ds.n_users, n), bool)
    seen[ds.user[train], ds.item[train]] = True
    rel = np.zeros((ds.n_users, n), bool)
    held_new = is_new[ds.item]
    rel[ds.user[held_new], ds.item[held_new]] = True
    rel_users = np.flatnonzero(rel.any(axis=1))
    new_pop = np.bincount(ds.item[held_new], minlength=n).astype(np.float64)

    def metrics(top: np.ndarray) -> dict[str, float]:
        hits = np.take_along_axis(rel, top, axis=1)[rel_users].sum(axis=1)
        n_rel = np.minimum(rel[rel_users].sum(axis=1), k)
        old = (top[split.test_user] == split.test_item[:, None]).any(axis=1)
        return {
            "new_hr": float((hits > 0).mean()),
            "new_recall": float((hits / n_rel).mean()),
            "old_hr": float(old.mean()),
            "new_share": float(is_new[top].mean()),
        }

    def ranked(new_vecs: np.ndarray) -> np.ndarray:
        f = factors.copy()
        f[new_rows] = new_vecs
        scores = users @ f.T
        scores[seen] = -np.inf
        return _top_k(scores, k)

    def with_slot(top: np.ndarray, pick: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Top k with the k-th place given to `pick` where `ok` and no new item is in the top k."""
        top = top.copy()
        put = ok & ~is_new[top].any(axis=1)
        top[put, -1] = pick[put]
        return top

    rows: dict[str, dict[str, float]] = {}
    tops = {name: ranked(v) for name, v in vectors.items()}
    for name, top in tops.items():
        rows[name] = metrics(top)
    # Exploration slot: cosine of the user vector to each new item's direction (norm-free).
    unit_new = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    unit_users = users / np.maximum(np.linalg.norm(users, axis=1, keepdims=True), 1e-12)
    cos = unit_users @ unit_new.T  # (U, m)
    cos[seen[:, new_rows]] = -np.inf
    best = np.argmax(cos, axis=1)
    best_cos = cos[np.arange(len(cos)), best]
    for base in ("raw", "calibrated"):
        for tau in slot_cosines:
            top = with_slot(tops[base], new_rows[best], best_cos >= tau)
            rows[f"slot_{tau:g}+{base}"] = metrics(top)
    # Content-free slot fillers (on raw vectors, whose answers rarely hold a new item).
    rand = new_rows[np.random.default_rng(seed + 1).integers(0, len(new_rows), ds.n_users)]
    rows["slot_random+raw"] = metrics(with_slot(tops["raw"], rand, ~seen[np.arange(ds.n_users), rand]))
    pop = np.where(seen[:, new_rows], -np.inf, new_pop[new_rows][None, :])
    oracle = new_rows[np.argmax(pop, axis=1)]
    rows["slot_oracle_popular+raw"] = metrics(with_slot(tops["raw"], oracle, np.isfinite(pop.max(axis=1))))

    out = {
        "protocol": {
            "dataset": ds.source,
            "new_frac": new_frac,
            "seed": seed,
            "k": k,
            "als": params.to_json(),
            "n_items": n,
            "n_new_items": int(len(new_rows)),
            "n_users_with_new_items": int(len(rel_users)),
            "n_old_test_users": int(len(split.test_user)),
            "new_share_true": float(held_new.mean()),
        },
        "content_map": {
            "heldout_cosine": report["heldout"]["cosine"],
            "mean_factor_cosine": report["baseline_mean_factor"]["cosine"],
            "calibration": report["calibration"],
            "scale_with_other_foldin_params": other_scales,
            "norm_median_scale": norm_scale,
            "trained_norm_median": float(np.median(fit_norms)),
            "new_items_norm_median": {
                name: float(np.median(np.linalg.norm(v, axis=1))) for name, v in vectors.items()
            },
        },
        "variants": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return out


def star_wars_case(
    ds: Dataset, wheels_dir: Path, k: int = 20, params: ALSParams = PARAMS, depth: int = 100
) -> dict[str, Any]:
    """The issue's example through an exported version and the worker's live catalog.

    The version is exported with the encoder (and so the calibration), without LLM and
    context. The item is upserted through `LiveCatalog` (the calibrated path); for the
    before-picture the raw mapped vector is appended as a second row, and each row's place
    (1-based, within the top `depth`; None below it) is read with the other one excluded.
    """
    from export.pipeline import export_version
    from recgen.config import WorkerConfig
    from recgen.config.export import ExportConfig
    from recgen.core.content_map import apply_content_map as raw_map
    from worker.live_catalog import Change, LiveCatalog
    from worker.metrics import Metrics
    from worker.model import LoadedModel
    from worker.ranking import RankJob

    with tempfile.TemporaryDirectory() as d:
        opts = ExportConfig(
            with_llm=False,
            with_context=False,
            factors=params.factors,
            reg=params.reg,
            alpha=params.alpha,
            iterations=params.iterations,
            progress=False,
            evaluate_ease=False,
            wheels_dir=wheels_dir,
        )
        export_version(ds, Path(d), opts)
        m = LoadedModel.load(Path(d), None, WorkerConfig(threads=2), Metrics())
        try:
            titles = {it.title: i for i, it in enumerate(m.catalog)}
            hist = np.asarray([titles[t] for t in STAR_WARS_HISTORY], np.int64)
            LiveCatalog().apply(m, [Change(1, False, STAR_WARS)])
            cal_row = m.item_index[STAR_WARS.item_id]
            assert m.encoder is not None and m.content_map is not None, "exported with the encoder"
            raw_vec = raw_map(m.content_map, m.encoder.encode([item_text(STAR_WARS)]))
            m.ranker.append_items(raw_vec)
            m.catalog.append(CatalogItem("sw-raw", STAR_WARS.title + " [raw]"))
            raw_row = len(m.catalog) - 1

            def place(row: int, other: int) -> tuple[int | None, list[str]]:
                job = RankJob(hist, np.ones(hist.size, np.float32), np.asarray([other], np.int64), depth)
                res = m.ranker.rank([job])[0].rows.tolist()
                return (res.index(row) + 1 if row in res else None), [m.catalog[r].title for r in res]

            cal_place, cal_list = place(cal_row, raw_row)
            raw_place, _ = place(raw_row, cal_row)
            f = m.ranker.factors
            return {
                "history": list(STAR_WARS_HISTORY),
                "k": k,
                "place_raw": raw_place,
                "place_calibrated": cal_place,
                "norm_raw": float(np.linalg.norm(f[raw_row])),
                "norm_calibrated": float(np.linalg.norm(f[cal_row])),
                "trained_norm_median": float(np.median(np.linalg.norm(f[: len(ds.items)], axis=1))),
                "in_top_k_raw": raw_place is not None and raw_place <= k,
                "in_top_k_calibrated": cal_place is not None and cal_place <= k,
                "calibration_scale": float(np.linalg.norm(f[cal_row]) / np.linalg.norm(f[raw_row])),
                "top_k_calibrated": cal_list[:k],
            }
        finally:
            m.close()


def _table(res: dict[str, Any]) -> str:
    k = res["protocol"]["k"]
    lines = [
        f"| variant | new HR@{k} | new recall@{k} | old HR@{k} | new share of top-{k} |",
        "|---|---|---|---|---|",
    ]
    for name, r in res["variants"].items():
        cells = " | ".join(f"{r[m]:.4f}" for m in ("new_hr", "new_recall", "old_hr", "new_share"))
        lines.append(f"| {name} | {cells} |")
    lines.append(f"(new items' true share of interactions: {res['protocol']['new_share_true']:.4f})")
    return "\n".join(lines)


def mean_over_seeds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The variants' metrics averaged over runs with different seeds (same keys as one run)."""
    first = results[0]
    return {
        "protocol": {**first["protocol"], "seed": [r["protocol"]["seed"] for r in results]}
        | {"new_share_true": float(np.mean([r["protocol"]["new_share_true"] for r in results]))},
        "variants": {
            name: {m: float(np.mean([r["variants"][name][m] for r in results])) for m in row}
            for name, row in first["variants"].items()
        },
        "scales": [r["content_map"]["calibration"]["scale"] for r in results],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheels", type=Path, default=Path(".cache/wheels"))
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated: which items are new")
    ap.add_argument("--new-frac", type=float, default=NEW_FRAC)
    ap.add_argument("--cache", type=Path, default=Path(".cache/bench/new_items_emb.npy"))
    ap.add_argument("--no-worker-case", action="store_true", help="skip the Star Wars case (an export)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ds = load_movielens100k(args.wheels)
    cache = args.cache.with_name(f"{args.cache.stem}_{ds.fingerprint[:12]}{args.cache.suffix}")
    emb = encode_items(ds.items, cache)
    runs = []
    for seed in (int(x) for x in args.seeds.split(",")):
        res = measure_new_items(ds, seed=seed, new_frac=args.new_frac, embeddings=emb)
        print(f"seed {seed}: content map {json.dumps(res['content_map'])}")
        print(_table(res))
        runs.append(res)
    out: dict[str, Any] = {"runs": runs}
    if len(runs) > 1:
        out["mean"] = mean_over_seeds(runs)
        print(f"mean over seeds {args.seeds} (calibration scales {out['mean']['scales']}):")
        print(_table(out["mean"]))
    if not args.no_worker_case:
        out["star_wars"] = star_wars_case(ds, args.wheels)
        print("Star Wars case (worker path):", json.dumps(out["star_wars"], indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
