"""The synthetic interaction logs (tools/synthetic_interactions.py) and loading them."""

import csv
from pathlib import Path

import numpy as np
import pytest

from export.data import load_files
from tools.synthetic_interactions import generate, main

pytest.importorskip("pyarrow")


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        main(["--rows", "3000", "--out", str(tmp_path / name), "--seed", str(seed)])
    read = {n: [(tmp_path / n / f).read_bytes() for f in ("interactions.csv", "items.csv")] for n in "abc"}
    assert read["a"] == read["b"]
    assert read["a"][0] != read["c"][0]


def test_log_shape() -> None:
    log = generate(60_000, seed=3)
    assert len(log.user) == len(log.item) == len(log.rating) == len(log.timestamp) == 60_000
    assert (log.n_users, log.n_items) == (600, 1000)
    assert np.unique(log.user).size == log.n_users  # every user has a row
    assert 1 <= log.item.min() and log.item.max() <= log.n_items
    assert (np.diff(log.timestamp) >= 0).all()  # a log: time never goes back
    assert set(np.unique(log.rating).tolist()) == {1, 2, 3, 4, 5}
    # A long tail: the top 1% of items hold a large share of the rows, many items very few.
    per_item = np.sort(np.bincount(log.item, minlength=log.n_items + 1)[1:])[::-1]
    assert per_item[:10].sum() > 0.1 * len(log.item)
    assert np.median(per_item) < per_item.mean() / 2
    per_user = np.bincount(log.user)[1:]
    assert per_user.max() > 5 * np.median(per_user)  # log-normal activity


def test_files_load_and_agree(tmp_path: Path) -> None:
    main(["--rows", "5000", "--out", str(tmp_path / "csv")])
    main(["--rows", "5000", "--out", str(tmp_path / "pq"), "--parquet"])
    with (tmp_path / "csv" / "items.csv").open(newline="") as f:
        catalog = list(csv.DictReader(f))
    assert len({r["title"] for r in catalog}) == len(catalog)  # titles are unique
    assert catalog[0]["title"].startswith("Item 1 (") and catalog[0]["categories"]
    from_csv = load_files(tmp_path / "csv" / "interactions.csv", tmp_path / "csv" / "items.csv")
    from_pq = load_files(tmp_path / "pq" / "interactions.parquet", tmp_path / "pq" / "items.csv")
    assert len(from_csv) + from_csv.report.duplicates_removed == 5000  # every item id is in the catalog
    assert from_csv.users == from_pq.users
    for a in ("user", "item", "rating", "timestamp"):
        assert np.array_equal(getattr(from_csv, a), getattr(from_pq, a))
