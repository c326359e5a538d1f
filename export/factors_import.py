"""Item factors trained elsewhere (Spark MLlib ALS, or .npy arrays) mapped onto a catalog.

`recgen export --factors-from PATH` builds a version from factors a cluster trained instead of
training them here. Two layouts are read:

* **spark**: what `ALSModel.save(PATH)` writes: `itemFactors/` and `userFactors/` Parquet
  datasets (`id` int, `features` array<float>) and `metadata/part-*` (one JSON line). Spark's
  integer ids are matched to the catalog's item_id strings by their decimal text ("42").
  The saved model's metadata records `rank` and the column names but not the estimator's
  regParam, alpha or implicitPrefs (checked with Spark 4.3.0): they are read where a
  metadata file does record them, and otherwise must be given (`--reg`, `--alpha`).
* **npy**: an (items, d) float array and a text file of item ids, one a line, in row order;
  optionally user factors with their own id file.

The fold-in recgen serves needs the λ and α the factors were trained with (recgen/core/foldin.py:
x = (YᵀY + λI + Σ (c−1) y yᵀ)⁻¹ Σ c y, c = 1 + α per interaction). Spark's implicit ALS
solves the same system for each user with λ scaled by the user's interaction count
(ALS-WR); the served fold-in keeps one λ for every user, so its user vectors differ
slightly from Spark's own. Where user factors come with the item factors, the import
measures that agreement (cosine of fold-in vs imported user vectors) for the manifest.

Catalog items without factors that have no interaction either get the zero vector, which
is what recgen's own ALS gives an item nobody interacted with (score 0, popularity still
counts); items with interactions but no factors, and factors of items not in the
catalog, stop the export: the factors were trained on other data. This module does not
train, evaluate or write a version (export/pipeline.py does).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.data import DataError, Dataset
from export.evaluate import fold_in, user_histories
from export.mf import ALSParams
from recgen.core.foldin import FoldIn

LOG = logging.getLogger(__name__)

FORMATS = ("spark", "npy")
AGREEMENT_USERS = 2000  # users whose fold-in is compared with their imported vector
AGREEMENT_WARN = 0.9  # median cosine below this: the flags probably do not match the training
QUALITY_NOTE = (
    "not a true held-out figure: the imported factors were trained on every interaction, "
    "the held-out ones included; the fold-in and ranking are evaluated as served"
)


class FactorsError(DataError):
    """Imported factors cannot be used; the message names the file and the problem."""


@dataclass
class ImportedFactors:
    item_factors: np.ndarray  # (n_items, d) float32; row i is ds.items[i]
    reg: float  # λ the served fold-in uses
    alpha: float  # confidence slope: c = 1 + α per interaction
    source: str  # "spark:<path>" | "npy:<path>"
    report: dict[str, Any] = field(default_factory=dict)  # counts and checks, for the manifest

    @property
    def params(self) -> ALSParams:
        return ALSParams(
            factors=int(self.item_factors.shape[1]), reg=self.reg, alpha=self.alpha, iterations=0
        )

    def to_json(self) -> dict[str, Any]:
        """The manifest's params.mf."""
        return {"factors": self.params.factors, "reg": self.reg, "alpha": self.alpha, "source": self.source}


# --------------------------------------------------------------------------- reading


def _first(values: list[str], n: int = 5) -> str:
    return ", ".join(repr(v) for v in values[:n]) + (", ..." if len(values) > n else "")


def _parquet_factors(path: Path) -> tuple[list[str], np.ndarray]:
    """A Spark factors dataset (a folder of part-*.parquet) -> (ids as text, (n, d) float32)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["id", "features"])  # skips _SUCCESS, .crc files
    except (OSError, pa.ArrowException, KeyError) as e:
        raise FactorsError(f"{path}: cannot read Spark factors (columns id, features): {e}") from None
    if not pa.types.is_integer(table.schema.field("id").type):
        raise FactorsError(f"{path}: column id is {table.schema.field('id').type}, expected an integer")
    feats = table.column("features").combine_chunks()
    if not (pa.types.is_list(feats.type) or pa.types.is_large_list(feats.type)):
        raise FactorsError(f"{path}: column features is {feats.type}, expected array<float>")
    if table.num_rows == 0:
        raise FactorsError(f"{path}: no factors")
    if feats.null_count or table.column("id").null_count:
        raise FactorsError(f"{path}: null ids or features")
    lengths = np.asarray(feats.value_lengths())
    if (lengths != lengths[0]).any():
        raise FactorsError(f"{path}: features of different lengths ({lengths.min()}..{lengths.max()})")
    values = feats.flatten().to_numpy(zero_copy_only=False)
    ids = [str(v) for v in table.column("id").to_numpy().tolist()]
    return ids, values.astype(np.float32, copy=False).reshape(len(ids), int(lengths[0]))


def _spark_metadata(model: Path) -> dict[str, Any]:
    """metadata/part-* JSON with paramMap over defaultParamMap ({} where there is none)."""
    parts = sorted((model / "metadata").glob("part-*"))
    if not parts:
        return {}
    try:
        meta = json.loads(parts[0].read_text().splitlines()[0])
    except (OSError, ValueError, IndexError) as e:
        raise FactorsError(f"{parts[0]}: not Spark model metadata (one JSON line): {e}") from None
    params = {**meta.get("defaultParamMap", {}), **meta.get("paramMap", {})}
    return {"meta": meta, "params": params}


def _npy(path: Path, ids_path: Path | None, what: str) -> tuple[list[str], np.ndarray]:
    if ids_path is None:
        raise FactorsError(f"{path}: {what} ids are needed (a text file, one id a line, in row order)")
    try:
        arr = np.load(path, allow_pickle=False)
        ids = ids_path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as e:
        raise FactorsError(f"{path}: cannot read {what} factors: {e}") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise FactorsError(
            f"{path}: expected a 2-d float array of {what} factors, got {arr.dtype} {arr.shape}"
        )
    if len(ids) != arr.shape[0]:
        raise FactorsError(f"{ids_path}: {len(ids)} ids for {arr.shape[0]} rows of {path}")
    return ids, arr.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- onto the catalog


def _onto_catalog(ds: Dataset, ids: list[str], vecs: np.ndarray, where: str) -> tuple[np.ndarray, int]:
    """(n_items, d) factors in catalog row order; returns them and the zero stand-in count."""
    if not np.isfinite(vecs).all():
        raise FactorsError(f"{where}: factors hold NaN or infinite values")
    row = {it.item_id: i for i, it in enumerate(ds.items)}
    at = np.array([row.get(i, -1) for i in ids], dtype=np.int64)
    unknown = [ids[k] for k in np.flatnonzero(at < 0)]
    if unknown:
        raise FactorsError(
            f"{where}: {len(unknown)} item ids with factors are not in the item catalog: {_first(unknown)}"
        )
    if len(np.unique(at)) != len(at):
        dup = [ids[k] for k in np.flatnonzero(np.bincount(at, minlength=ds.n_items)[at] > 1)]
        raise FactorsError(f"{where}: item ids appear more than once: {_first(sorted(set(dup)))}")
    have = np.zeros(ds.n_items, dtype=bool)
    have[at] = True
    counts = np.bincount(ds.item, minlength=ds.n_items)
    missing = np.flatnonzero(~have & (counts > 0))
    if len(missing):
        names = [ds.items[i].item_id for i in missing]
        raise FactorsError(
            f"{where}: {len(missing)} catalog items with interactions have no factors: {_first(names)} "
            "(were the factors trained on these interactions?)"
        )
    out = np.zeros((ds.n_items, vecs.shape[1]), dtype=np.float32)
    out[at] = vecs
    return out, int((~have).sum())


def _agreement(
    ds: Dataset,
    item_factors: np.ndarray,
    reg: float,
    alpha: float,
    ids: list[str],
    vecs: np.ndarray,
    seed: int = 0,
) -> dict[str, Any]:
    """Cosine between the fold-in of each user's interactions and their imported vector."""
    row = {u: i for i, u in enumerate(ds.users)}
    pairs = [(row[u], k) for k, u in enumerate(ids) if u in row]
    out: dict[str, Any] = {"users_with_factors": len(pairs), "users_in_data": ds.n_users}
    if not pairs:
        return out
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pairs), min(AGREEMENT_USERS, len(pairs)), replace=False)
    users = np.array([pairs[p][0] for p in pick])
    theirs = vecs[[pairs[p][1] for p in pick]].astype(np.float64)
    hist = user_histories(ds, np.flatnonzero(np.isin(ds.user, users)), alpha)
    mine = fold_in(FoldIn(item_factors, reg), [hist[u] for u in users]).astype(np.float64)  # bounded padding
    norms = np.linalg.norm(mine, axis=1) * np.linalg.norm(theirs, axis=1)
    cos = np.einsum("ud,ud->u", mine, theirs) / np.maximum(norms, 1e-30)
    out.update(
        users_compared=len(users),
        cosine_median=round(float(np.median(cos)), 5),
        cosine_p05=round(float(np.quantile(cos, 0.05)), 5),
    )
    if out["cosine_median"] < AGREEMENT_WARN:
        LOG.warning(
            "imported user factors disagree with recgen's fold-in (median cosine %.3f over %d users): "
            "check --reg/--alpha and that the factors were trained on these interactions with "
            "c = 1 + alpha per interaction",
            out["cosine_median"],
            len(users),
        )
    return out


# --------------------------------------------------------------------------- the entry point


def detect_format(path: Path) -> str:
    if path.is_dir() and (path / "itemFactors").is_dir():
        return "spark"
    if path.suffix == ".npy":
        return "npy"
    raise FactorsError(f"{path}: neither a Spark ALS model folder (with itemFactors/) nor a .npy file")


def load_factors(
    path: Path | str,
    ds: Dataset,
    *,
    fmt: str | None = None,
    reg: float | None = None,
    alpha: float | None = None,
    item_ids: Path | str | None = None,
    user_factors: Path | str | None = None,
    user_ids: Path | str | None = None,
) -> ImportedFactors:
    """Factors at `path` (a Spark model folder or an .npy file) in `ds`'s catalog order.

    reg, alpha: what the factors were trained with; for Spark, where given, they override
    what the metadata records. Raises FactorsError before anything is written.
    """
    path = Path(path)
    if not path.exists():
        raise FactorsError(f"{path}: no such file or folder")
    fmt = fmt or detect_format(path)
    assert fmt in FORMATS, fmt
    report: dict[str, Any] = {"format": fmt}
    users: tuple[list[str], np.ndarray] | None = None
    if fmt == "spark":
        if not (path / "itemFactors").is_dir():
            raise FactorsError(f"{path}: not a Spark ALS model folder (no itemFactors/)")
        md = _spark_metadata(path)
        params = md.get("params", {})
        if md:
            report["spark_version"] = md["meta"].get("sparkVersion")
        if params.get("implicitPrefs") is False:
            raise FactorsError(
                f"{path}: trained with implicitPrefs=false (explicit ratings); recgen folds users in "
                "with implicit ALS: train with ALS(implicitPrefs=True)"
            )
        for flag, key, given in (("--reg", "regParam", reg), ("--alpha", "alpha", alpha)):
            if given is not None and key in params and float(params[key]) != given:
                LOG.warning("%s %g overrides the metadata's %s %g", flag, given, key, params[key])
        reg = float(params["regParam"]) if reg is None and "regParam" in params else reg
        alpha = float(params["alpha"]) if alpha is None and "alpha" in params else alpha
        ids, vecs = _parquet_factors(path / "itemFactors")
        rank = md.get("meta", {}).get("rank")
        if rank is not None and int(rank) != vecs.shape[1]:
            raise FactorsError(
                f"{path}: metadata says rank {rank}, itemFactors have {vecs.shape[1]} features"
            )
        if (path / "userFactors").is_dir():
            users = _parquet_factors(path / "userFactors")
        report["reg_note"] = (
            "Spark's ALS scales regParam by each user's interaction count (ALS-WR); the served "
            "fold-in uses reg for every user"
        )
    else:
        ids, vecs = _npy(path, None if item_ids is None else Path(item_ids), "item")
        if user_factors is not None:
            users = _npy(Path(user_factors), None if user_ids is None else Path(user_ids), "user")
    if reg is None or alpha is None:
        where = f"{path}/metadata" if fmt == "spark" else str(path)
        raise FactorsError(
            f"{where} does not record the regularization and confidence the factors were trained with: "
            "give --reg and --alpha (Spark: regParam and alpha)"
        )
    if reg <= 0 or alpha < 0:
        raise FactorsError(f"--reg must be > 0 and --alpha >= 0 (got {reg}, {alpha})")
    items, zero = _onto_catalog(ds, ids, vecs, str(path))
    report.update(items_with_factors=len(ids), items_zero_stand_in=zero)
    if users is not None:
        if users[1].shape[1] != items.shape[1]:
            raise FactorsError(
                f"{path}: user factors have {users[1].shape[1]} features, items {items.shape[1]}"
            )
        report["user_agreement"] = _agreement(ds, items, reg, alpha, *users)
    LOG.info("imported %s factors from %s: %s", fmt, path, json.dumps(report))
    return ImportedFactors(items, float(reg), float(alpha), f"{fmt}:{path}", report)
