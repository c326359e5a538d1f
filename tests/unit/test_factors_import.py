"""`recgen export --factors-from`: item factors trained elsewhere become a version, untrained here.

The Spark layout is written by pyarrow as `ALSModel.save` writes it (checked against Spark
4.3.0): `itemFactors/` and `userFactors/` folders of part-*.parquet files (`id` int32,
`features` list<float32>) with `_SUCCESS` and `.crc` files beside them, and `metadata/part-*`,
one JSON line that records `rank` but not regParam, alpha or implicitPrefs. The reference is
the input factors themselves (row by id) and a numpy fold-in against them.
"""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export.data import Dataset, load_movielens100k
from export.evaluate import evaluate_mf, leave_last_out
from export.factors_import import FactorsError, ImportedFactors, load_factors
from export.mf import ALSParams, train_als
from export.model_selection import held_histories, served
from export.pipeline import export_version
from recgen.cli import main
from recgen.config.export import ExportConfig
from recgen.core.foldin import FoldIn
from recgen.core.user_history import USERS_DIR, UserHistories
from recgen.repository import ModelRepository
from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procs import Gateway

REG, ALPHA = 0.1, 2.0


@pytest.fixture(scope="module")
def ml100k(wheels_dir: Path) -> Dataset:
    return load_movielens100k(wheels_dir)


@pytest.fixture(scope="module")
def trained(ml100k: Dataset):
    """Stands in for the cluster: (user factors, item factors) from a short iALS run."""
    m = train_als(ml100k.user, ml100k.item, ml100k.n_users, ml100k.n_items, ALSParams(16, REG, ALPHA, 3))
    return m.user_factors, m.item_factors


def _factors_dataset(folder: Path, ids: np.ndarray, vecs: np.ndarray, seed: int) -> None:
    """Spark's rows come in no particular order, over several part files."""
    folder.mkdir(parents=True)
    order = np.random.default_rng(seed).permutation(len(ids))
    job = uuid.UUID(int=seed)
    for p, rows in enumerate(np.array_split(order, 3)):
        flat = pa.array(vecs[rows].ravel(), pa.float32())
        offsets = pa.array(np.arange(len(rows) + 1, dtype=np.int32) * vecs.shape[1])
        table = pa.table(
            {"id": pa.array(ids[rows], pa.int32()), "features": pa.ListArray.from_arrays(offsets, flat)}
        )
        name = f"part-{p:05d}-{job}-c000.snappy.parquet"
        pq.write_table(table, folder / name, compression="snappy")
        (folder / f".{name}.crc").write_bytes(b"crc\x00junk")  # Hadoop checksums: not Parquet
    (folder / "_SUCCESS").write_bytes(b"")


def write_spark(path: Path, ds: Dataset, users: np.ndarray, items: np.ndarray, **params) -> Path:
    user_ids = np.array([int(u) for u in ds.users])
    item_ids = np.array([int(it.item_id) for it in ds.items])
    _factors_dataset(path / "userFactors", user_ids, users, 1)
    _factors_dataset(path / "itemFactors", item_ids, items, 2)
    (path / "metadata").mkdir()
    meta = {
        "class": "org.apache.spark.ml.recommendation.ALSModel",
        "timestamp": 1796552062738,
        "sparkVersion": "4.3.0",
        "uid": "ALS_c5db52d840ec",
        "paramMap": {"blockSize": 4096, "itemCol": "item_id", "userCol": "user_id", **params},
        "defaultParamMap": {"blockSize": 4096, "coldStartStrategy": "nan", "itemCol": "item"},
        "rank": int(items.shape[1]),
    }
    (path / "metadata" / f"part-00000-{uuid.UUID(int=3)}-c000.txt").write_text(json.dumps(meta) + "\n")
    (path / "metadata" / "_SUCCESS").write_bytes(b"")
    return path


def by_id(root: Path) -> dict[str, np.ndarray]:
    mv = ModelRepository(root).open()
    factors = np.load(mv.file("item_factors.npy"))
    return {it.item_id: factors[i] for i, it in enumerate(mv.catalog())}


def test_spark_model_builds_a_version_served_as_the_offline_fold_in(
    tmp_path: Path, ml100k: Dataset, trained, wheels_dir: Path, monkeypatch, capsys
) -> None:
    users, items = trained
    spark = write_spark(tmp_path / "als", ml100k, users, items)
    models = tmp_path / "models"
    args = ["export", "--models", str(models), "--wheels", str(wheels_dir), "--quiet", "--no-llm"]
    args += ["--no-encoder", "--no-context", "--factors-from", str(spark)]

    # Spark's saved model does not record regParam / alpha: the flags are required.
    assert main(args) == 2
    assert "give --reg and --alpha" in capsys.readouterr().out and not models.exists()

    def no_training(*a, **kw):
        raise AssertionError("imported factors must not be trained again")

    monkeypatch.setattr("export.pipeline.train_als", no_training)
    assert main([*args, "--reg", str(REG), "--alpha", str(ALPHA)]) == 0
    assert "not a true held-out figure" in capsys.readouterr().out
    mv = ModelRepository(models).open()
    assert mv.manifest.params["mf"] == {"factors": 16, "reg": REG, "alpha": ALPHA, "source": f"spark:{spark}"}
    q = mv.manifest.metrics["quality"]
    assert q["tuning"] == [] and "not a true held-out" in q["note"]
    imp = mv.manifest.metrics["factors_import"]
    assert imp["items_with_factors"] == ml100k.n_items and imp["items_zero_stand_in"] == 0
    assert imp["user_agreement"]["users_compared"] == ml100k.n_users
    assert imp["user_agreement"]["cosine_median"] > 0.95  # the fold-in agrees with the trainer's users
    # The same evaluation code as a trained version, on the imported factors.
    split = leave_last_out(ml100k)  # evaluated on the histories the version serves
    served_hist = served(held_histories(ml100k, split.train_rows), ALPHA)
    assert q["mf"] == evaluate_mf(ml100k, split, items, REG, ALPHA, histories=served_hist)

    # The workers' fold-in uses exactly the imported item factors, row by id.
    rows = by_id(models)
    assert all(np.array_equal(rows[it.item_id], items[i]) for i, it in enumerate(ml100k.items))

    # A real served answer for training users = numpy fold-in of the version's history against
    # the input factors, every consumed item excluded.
    held = UserHistories(mv.path / USERS_DIR)
    fold = FoldIn(items, REG)
    ids = np.array([it.item_id for it in ml100k.items])
    gw = Gateway(models, tmp_path / "state.db", "--workers", "1").start()
    try:
        with grpc.insecure_channel(gw.target) as ch:
            stub = pbg.RecommenderStub(ch)
            for user in ("196", "13", "942"):
                u = held.index(user)
                r, conf = held.arrays.fold_in(u, ALPHA)
                scores = items @ fold.user_vectors([(r, conf)])[0]
                scores[held.get(user).seen] = -np.inf
                offline = ids[np.argsort(-scores, kind="stable")[:10]].tolist()
                got = stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=30).items
                assert [i.item_id for i in got] == offline, user
    finally:
        gw.stop(signal.SIGKILL)


def test_npy_factors_with_id_files(tmp_path: Path, ml100k: Dataset, trained) -> None:
    """Rows in any order, ids as text; the version's rows follow the catalog."""
    users, items = trained
    order = np.random.default_rng(5).permutation(ml100k.n_items)
    np.save(tmp_path / "items.npy", items[order])
    (tmp_path / "item_ids.txt").write_text("".join(ml100k.items[i].item_id + "\n" for i in order))
    np.save(tmp_path / "users.npy", users[::-1])
    (tmp_path / "user_ids.txt").write_text("\n".join(ml100k.users[::-1]) + "\n")
    imp = load_factors(
        tmp_path / "items.npy",
        ml100k,
        reg=REG,
        alpha=ALPHA,
        item_ids=tmp_path / "item_ids.txt",
        user_factors=tmp_path / "users.npy",
        user_ids=tmp_path / "user_ids.txt",
    )
    assert imp.report["user_agreement"]["cosine_median"] > 0.95
    opts = ExportConfig(
        with_llm=False, with_encoder=False, with_context=False, progress=False, evaluate_ease=False
    )
    path = export_version(ml100k, tmp_path / "models", opts, imp)
    rows = by_id(tmp_path / "models")
    assert all(np.array_equal(rows[it.item_id], items[i]) for i, it in enumerate(ml100k.items))
    assert json.loads((path / "manifest.json").read_text())["params"]["mf"]["source"].startswith("npy:")

    with pytest.raises(FactorsError, match="item ids are needed"):
        load_factors(tmp_path / "items.npy", ml100k, reg=REG, alpha=ALPHA)
    (tmp_path / "short.txt").write_text("1\n2\n")
    with pytest.raises(FactorsError, match="2 ids for 1682 rows"):
        load_factors(tmp_path / "items.npy", ml100k, reg=REG, alpha=ALPHA, item_ids=tmp_path / "short.txt")
    with pytest.raises(FactorsError, match="give --reg and --alpha"):
        load_factors(tmp_path / "items.npy", ml100k, item_ids=tmp_path / "item_ids.txt")


def test_spark_metadata_params_and_refusals(tmp_path: Path, ml100k: Dataset, trained) -> None:
    users, items = trained
    # Where the metadata records regParam and alpha, they are used; flags override them.
    recorded = write_spark(tmp_path / "a", ml100k, users, items, regParam=0.3, alpha=4.0, implicitPrefs=True)
    imp = load_factors(recorded, ml100k)
    assert (imp.reg, imp.alpha, imp.report["spark_version"]) == (0.3, 4.0, "4.3.0")
    assert load_factors(recorded, ml100k, reg=REG).reg == REG

    explicit = write_spark(tmp_path / "b", ml100k, users, items, regParam=0.1, alpha=1.0, implicitPrefs=False)
    with pytest.raises(FactorsError, match="implicitPrefs=false"):
        load_factors(explicit, ml100k)


def _subset(ds: Dataset, keep: np.ndarray) -> Dataset:
    return Dataset(
        ds.items, ds.users, ds.user[keep], ds.item[keep], ds.rating[keep], ds.timestamp[keep],
        ds.source, ds.fingerprint, ds.report,
    )  # fmt: skip


def test_catalog_items_and_factor_ids_must_match(tmp_path: Path, ml100k: Dataset, trained) -> None:
    users, items = trained
    ids = [it.item_id for it in ml100k.items]
    np.save(tmp_path / "items.npy", items)

    def load(ds: Dataset, item_ids: list[str], rows: np.ndarray) -> ImportedFactors:
        (tmp_path / "ids.txt").write_text("\n".join(item_ids) + "\n")
        np.save(tmp_path / "items.npy", rows)
        return load_factors(tmp_path / "items.npy", ds, reg=REG, alpha=ALPHA, item_ids=tmp_path / "ids.txt")

    with pytest.raises(
        FactorsError, match=r"2 item ids with factors are not in the item catalog: 'x1', 'x2'"
    ):
        load(ml100k, [*ids, "x1", "x2"], np.vstack([items, items[:2]]))
    with pytest.raises(
        FactorsError, match=r"7 catalog items with interactions have no factors: '1', '2', '3'"
    ):
        load(ml100k, ids[7:], items[7:])
    with pytest.raises(FactorsError, match="appear more than once"):
        load(ml100k, [*ids, ids[0]], np.vstack([items, items[:1]]))
    # A catalog item nobody interacted with gets the zero vector (as recgen's own ALS gives it).
    quiet = _subset(ml100k, np.flatnonzero(ml100k.item != 0))
    imp = load(quiet, ids[1:], items[1:])
    assert imp.report["items_zero_stand_in"] == 1 and not imp.item_factors[0].any()
    assert np.array_equal(imp.item_factors[1:], items[1:])
