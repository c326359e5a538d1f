"""Train implicit ALS with Spark MLlib on MovieLens-100K, for `recgen export --factors-from`.

Two steps, two Python environments (pyspark is not a recgen dependency):

    # 1. with recgen's venv: MovieLens-100K as CSV files (integer ids, as Spark's ALS needs)
    .venv/bin/python tools/spark_als_example.py csv --out /tmp/ml100k
    # 2. with any venv that has pyspark (and Java 17+): train and `model.save`
    /tmp/sparkvenv/bin/python tools/spark_als_example.py train \
        --interactions /tmp/ml100k/interactions.csv --out /tmp/ml100k/als
    # 3. the version, from those factors
    .venv/bin/recgen export --models models --interactions /tmp/ml100k/interactions.csv \
        --items /tmp/ml100k/items.csv --factors-from /tmp/ml100k/als --no-llm --no-encoder

Every rating is fed to Spark as 1.0: recgen's confidence is c = 1 + α·w with w = 1 per
interaction (export/mf.py), and Spark's implicit ALS uses c = 1 + α·|rating|. The run and its
figures are in docs/scaling.md ("Factors from a cluster"). Not run by the tests.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path


def write_csv(out: Path, wheels: str) -> None:
    from export.data import load_movielens100k

    ds = load_movielens100k(wheels)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "interactions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "rating", "timestamp"])
        for u, i, r, t in zip(ds.user, ds.item, ds.rating, ds.timestamp, strict=True):
            w.writerow([ds.users[u], ds.items[i].item_id, f"{r:g}", f"{t:.0f}"])
    with (out / "items.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "text", "categories"])
        for it in ds.items:
            w.writerow([it.item_id, it.title, it.text, "|".join(it.categories)])
    print(f"wrote {len(ds)} interactions, {ds.n_items} items to {out}")


def train(interactions: Path, out: Path, rank: int, reg: float, alpha: float, iterations: int) -> None:
    from pyspark.ml.recommendation import ALS  # lazily: only this step needs pyspark
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = (
        SparkSession.builder.master("local[*]")
        .appName("recgen-als")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    t0 = time.perf_counter()
    df = spark.read.csv(str(interactions), header=True, inferSchema=True)
    df = df.select(F.col("user_id").cast("int"), F.col("item_id").cast("int"), F.lit(1.0).alias("rating"))
    als = ALS(
        rank=rank,
        regParam=reg,
        alpha=alpha,
        maxIter=iterations,
        implicitPrefs=True,
        userCol="user_id",
        itemCol="item_id",
        ratingCol="rating",
        seed=0,
    )
    model = als.fit(df)
    fitted = time.perf_counter() - t0
    model.write().overwrite().save(str(out))
    took = time.perf_counter() - t0
    print(f"spark {spark.version}: ALS rank {rank} fitted in {fitted:.1f} s, saved to {out} ({took:.1f} s)")
    spark.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("csv", help="MovieLens-100K as interactions.csv + items.csv")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--wheels", default=".cache/wheels")
    t = sub.add_parser("train", help="Spark MLlib implicit ALS, saved with model.save")
    t.add_argument("--interactions", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--rank", type=int, default=32)
    t.add_argument("--reg", type=float, default=0.05)
    t.add_argument("--alpha", type=float, default=2.0)
    t.add_argument("--iterations", type=int, default=10)
    a = ap.parse_args()
    if a.cmd == "csv":
        write_csv(a.out, a.wheels)
    else:
        train(a.interactions, a.out, a.rank, a.reg, a.alpha, a.iterations)


if __name__ == "__main__":
    main()
