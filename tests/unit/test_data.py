"""Reading, validating and cleaning interaction data (export/data.py)."""

from pathlib import Path

import numpy as np
import pytest

from export.data import DataError, iter_user_histories, load_files, load_movielens100k

ITEMS = "item_id,title,categories\n1,Alpha (1990),Drama|Comedy\n2,Beta,Action\n3,Gamma,\n"


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def test_movielens_from_wheel(wheels_dir: Path) -> None:
    ds = load_movielens100k(wheels_dir)
    assert (ds.n_users, ds.n_items, len(ds)) == (943, 1682, 100000)
    titles = {it.item_id: it.title for it in ds.items}
    assert titles["12"] == "Usual Suspects, The (1995)"
    assert titles["267"] == "Item 267"  # "unkonwn" in the data: filled and reported
    assert ds.report.titles_missing_filled == 1
    assert "Crime" in next(it for it in ds.items if it.item_id == "12").categories


def test_user_files_clean_duplicates_and_missing(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", ITEMS)
    inter = write(
        tmp_path,
        "inter.csv",
        "user_id,item_id,rating,timestamp\n"
        "u1,1,5,100\n"
        "u1,1,5,100\n"  # exact duplicate: removed
        "u1,2,,200\n"  # missing rating: implicit positive
        ",3,4,300\n"  # missing user id: dropped
        "u2,3,4,\n"  # missing timestamp: file order
        "u2,1,99,50\n",
    )  # outlier rating: clipped
    ds = load_files(inter, items)
    r = ds.report
    assert (
        r.duplicates_removed,
        r.ratings_missing_filled,
        r.rows_missing_ids_dropped,
        r.timestamps_missing_filled,
        r.ratings_clipped,
    ) == (1, 1, 1, 1, 1)
    assert len(ds) == 4 and ds.n_users == 2
    assert ds.items[1].title == "Beta" and ds.items[0].categories == ("Drama", "Comedy")
    assert np.isfinite(ds.timestamp).all()


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    items = write(tmp_path, "items.csv", ITEMS)
    pq.write_table(pa.table({"user_id": ["a", "b"], "item_id": ["1", "2"]}), tmp_path / "i.parquet")
    ds = load_files(tmp_path / "i.parquet", items)
    assert len(ds) == 2 and not ds.has_ratings


@pytest.mark.parametrize(
    ("inter", "message"),
    [
        ("user_id,rating\nu1,3\n", "inter.csv:1: missing column(s) item_id"),
        ("user_id,item_id,rating\nu1,1,5\nu1,2,good\n", "inter.csv:3: non-numeric rating 'good'"),
        ("user_id,item_id\nu1,1\nu2,42\n", "inter.csv:3: unknown item '42'"),
        ("", "inter.csv: empty file"),
        ("user_id,item_id\n", "inter.csv: no data rows"),
        ("user_id,item_id\nu1,1,7\n", "inter.csv:2: expected 2 fields"),
    ],
)
def test_bad_files_name_file_line_and_problem(tmp_path: Path, inter: str, message: str) -> None:
    items = write(tmp_path, "items.csv", ITEMS)
    with pytest.raises(DataError) as e:
        load_files(write(tmp_path, "inter.csv", inter), items)
    assert message in str(e.value)


def test_duplicate_item_in_catalog(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", "item_id,title\n1,A\n1,B\n")
    inter = write(tmp_path, "inter.csv", "user_id,item_id\nu,1\n")
    with pytest.raises(DataError, match=r"items.csv:3: duplicate item_id '1'"):
        load_files(inter, items)


def test_histories_keep_time_ties_in_file_order(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", ITEMS)
    inter = write(tmp_path, "inter.csv", "user_id,item_id,timestamp\nu,3,10\nu,1,10\nu,2,5\n")
    ds = load_files(inter, items)
    ((_, rows),) = list(iter_user_histories(ds))
    assert [ds.items[i].item_id for i in ds.item[rows]] == ["2", "3", "1"]  # not by item id
