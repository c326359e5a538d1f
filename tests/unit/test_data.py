"""Reading, validating and cleaning interaction data (export/data.py)."""

import csv
import hashlib
import io
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from export import dedup, interactions_reader
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


# --------------------------------------------------------------------------- the columnar reader


def test_movielens_is_what_the_row_reader_made(wheels_dir: Path) -> None:
    """Pinned from the row-by-row reader that the columnar one replaced: the same Dataset, bit for bit."""
    ds = load_movielens100k(wheels_dir)
    assert ds.users[:5] == ["196", "186", "22", "244", "166"]  # numbered by first appearance
    assert [ds.items[i].item_id for i in ds.item[:3]] == ["242", "302", "377"]
    assert ds.rating[:3].tolist() == [3.0, 3.0, 1.0]
    assert ds.timestamp[:2].tolist() == [881250949.0, 891717742.0]
    assert (ds.user.dtype, ds.item.dtype, ds.rating.dtype, ds.timestamp.dtype) == (
        np.int32,
        np.int32,
        np.float32,
        np.float64,
    )
    arrays = b"".join(a.tobytes() for a in (ds.user, ds.item, ds.rating, ds.timestamp))
    assert (
        hashlib.sha256(arrays).hexdigest()
        == "f2e2c7058d9edcc2eab098438c7d09b46894ff84bcc7078e46e4526531a40c19"
    )
    assert hashlib.sha256("\n".join(ds.users).encode()).hexdigest() == (
        "af35be1ab368a898882ba7d80f555507e3a6ee8783368c0e1de594cb4111426d"
    )
    assert ds.fingerprint == "c4b535b085e36a6637bf6c70de4d672886ad4939e34178663bc642af055630dc"
    assert ds.report.to_json() == {
        "rows_read": 100000,
        "duplicates_removed": 0,
        "rows_missing_ids_dropped": 0,
        "ratings_missing_filled": 0,
        "timestamps_missing_filled": 0,
        "ratings_clipped": 0,
        "titles_missing_filled": 1,
        "timestamp_outliers": 0,
        "heavy_users": ["13", "405", "655"],
        "items_without_interactions": 0,
    }


def test_movielens_in_many_blocks(wheels_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = load_movielens100k(wheels_dir)
    monkeypatch.setattr(interactions_reader, "_BLOCK", 16 << 10)  # ~100 batches, each its own dictionaries
    parts = load_movielens100k(wheels_dir)
    assert parts.users == whole.users
    for a in ("user", "item", "rating", "timestamp"):
        assert np.array_equal(getattr(parts, a), getattr(whole, a))


def test_duplicates_keep_the_first_row_and_users_their_first_kept_row(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", ITEMS)
    inter = write(
        tmp_path,
        "inter.csv",
        "user_id,item_id,rating,timestamp\n"
        "b,2,,10\n"  # b's first row has no rating: kept, filled
        "a,,5,11\n"  # a's first row has no item: dropped, so a is numbered after c
        "c,1,4,12\n"
        "b,2,,10.0\n"  # the same time as line 2, spelled differently: a duplicate
        "a,3,5,13\n"
        "c,1,4,12\n"  # a duplicate of line 4, after other rows
        "c,1,5,12\n",  # another rating: not a duplicate
    )
    ds = load_files(inter, items)
    assert ds.users == ["b", "c", "a"]
    assert [(ds.users[u], ds.items[i].item_id) for u, i in zip(ds.user, ds.item, strict=True)] == [
        ("b", "2"),
        ("c", "1"),
        ("a", "3"),
        ("c", "1"),
    ]
    assert ds.rating.tolist() == [1.0, 4.0, 5.0, 5.0]
    assert ds.timestamp.tolist() == [10.0, 12.0, 13.0, 12.0]
    r = ds.report
    assert (r.rows_read, r.duplicates_removed, r.rows_missing_ids_dropped, r.ratings_missing_filled) == (
        7,
        2,
        1,
        1,
    )


@pytest.mark.parametrize(
    ("inter", "message"),
    [
        # The row reader's line numbers: blank lines count, blank rows are skipped.
        ("user_id,item_id\nu1,1\n\n  \n,,\nu2,42\n", "inter.csv:6: unknown item '42'"),
        # A row without ids is dropped unchecked: the first error is the next one.
        ("user_id,item_id,rating\n,1,bad\nu1,2,worse\n", "inter.csv:3: non-numeric rating 'worse'"),
        ("user_id,item_id,timestamp\nu1,1,10\nu1,2,inf\n", "inter.csv:3: non-finite timestamp 'inf'"),
        (
            "user_id,item_id,timestamp\nu1,1,10\nu1,2,2020-01-01\n",
            "inter.csv:3: non-numeric timestamp '2020-01-01'",
        ),
        # An item check comes before the rating check on the same row, as before.
        ("user_id,item_id,rating\nu1,9,bad\n", "inter.csv:2: unknown item '9'"),
        # A quoted newline makes one row of two lines; the next row is on line 4 (the row
        # reader said 3: it counted rows).
        ('user_id,item_id,note\nu1,1,"two\nlines"\nu1,7,x\n', "inter.csv:4: unknown item '7'"),
        ("user_id,item_id\nu1,1\nu1,2,3\n", "inter.csv:3: expected 2 fields (user_id,item_id), found 3"),
        ("user_id,item_id", "inter.csv: no data rows after the header"),
        ("user_id,item_id\n\n   \n", "inter.csv: no data rows after the header"),
        ("user_id,item_id\nu1,\n", "inter.csv: no usable interaction rows"),
    ],
)
def test_columnar_errors_name_the_row_readers_line(tmp_path: Path, inter: str, message: str) -> None:
    items = write(tmp_path, "items.csv", ITEMS)
    with pytest.raises(DataError) as e:
        load_files(write(tmp_path, "inter.csv", inter), items)
    assert message in str(e.value)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", ITEMS)
    inter = tmp_path / "inter.csv"
    inter.write_bytes(b"user_id,item_id\nu1,1\nu\xff2,2\n")
    with pytest.raises(DataError, match=r"inter\.csv:3: not UTF-8 text \(byte 0xff"):
        load_files(inter, items)


def test_parquet_columns(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    items = write(tmp_path, "items.csv", ITEMS)
    table = pa.table(
        {
            "User_ID": ["a", "b", "a", None, "a", "c"],  # names compare lower-cased
            "item_id": pa.array([1, 2, 1, 3, 3, 2], pa.int64()),  # integer ids read as their str()
            "rating": [5.0, float("nan"), 5.0, 4.0, 12.0, 1.0],  # NaN: missing, as "nan" always was
            "timestamp": pa.array([10, 20, 10, 30, None, 40], pa.int64()),
        }
    )
    pq.write_table(table, tmp_path / "i.parquet", row_group_size=4)  # two row groups
    ds = load_files(tmp_path / "i.parquet", items)
    assert ds.users == ["a", "b", "c"]
    assert [ds.items[i].item_id for i in ds.item] == ["1", "2", "3", "2"]
    assert ds.rating.tolist() == [5.0, 1.0, 10.0, 1.0]
    assert ds.timestamp.tolist() == [10.0, 20.0, 41.0, 40.0]  # a missing time: after the last one
    r = ds.report
    assert (r.rows_read, r.duplicates_removed, r.rows_missing_ids_dropped) == (6, 1, 1)
    assert (r.ratings_missing_filled, r.ratings_clipped, r.timestamps_missing_filled) == (1, 1, 1)


def test_parquet_errors_count_rows_as_lines(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    items = write(tmp_path, "items.csv", ITEMS)
    pq.write_table(
        pa.table({"user_id": ["a", "b"], "item_id": ["1", "2"], "rating": ["5", "x"]}), tmp_path / "i.pq"
    )
    with pytest.raises(DataError, match=r"i\.pq:3: non-numeric rating 'x'"):
        load_files(tmp_path / "i.pq", items)


def test_hash_collisions_are_settled_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    for mix in (0x9E3779B97F4A7C15, 0, 2):  # 0: every row one hash; 2: many collisions
        monkeypatch.setattr(dedup, "_MIX", np.uint64(mix))
        monkeypatch.setattr(dedup, "_ROWS", 7)  # many blocks
        for _ in range(50):
            n = int(rng.integers(1, 300))
            keys = [rng.integers(0, 4, n).astype(t) for t in (np.int32, np.int32, np.uint8, np.int64)]
            seen: set[tuple[int, ...]] = set()
            expected = []
            for row in zip(*(k.tolist() for k in keys), strict=True):
                expected.append(row in seen)
                seen.add(row)
            assert dedup._repeats(keys).tolist() == expected


def reference_load(
    text: str, catalog: set[str]
) -> tuple[list[str], list[tuple[str, str, float, float]], dict] | str:
    """A condensed copy of the row-by-row reader the columnar one replaced: (users, rows, report
    counters), or the error after the file name. Two changes, both in the columnar reader too:
    a duplicate compares the time as a number, and lines are physical lines."""
    reader = csv.reader(io.StringIO(text))
    cols = [h.strip().split(":")[0].lower() for h in next(reader)]
    users: dict[str, int] = {}
    rows: list[tuple[str, str, float, float | None]] = []
    seen: set[tuple[str, str, str, float | None]] = set()
    report = dict.fromkeys(("rows_read", "duplicates_removed", "rows_missing_ids_dropped"), 0)
    report |= dict.fromkeys(("ratings_missing_filled", "timestamps_missing_filled", "ratings_clipped"), 0)

    def number(value: str, line: int, column: str) -> float | None:
        if value.lower() in MISSING:
            return None
        try:
            x = float(value)
        except ValueError:
            raise ValueError(f":{line}: non-numeric {column} {value!r}") from None
        if not math.isfinite(x):
            raise ValueError(f":{line}: non-finite {column} {value!r}")
        return x

    try:
        start = reader.line_num + 1
        for rec in reader:
            line, start = start, reader.line_num + 1  # where the row starts
            if not rec or all(not c.strip() for c in rec):
                continue
            if len(rec) != len(cols):
                raise ValueError(f":{line}: expected {len(cols)} fields")
            row = {c: v.strip() for c, v in zip(cols, rec, strict=True)}
            report["rows_read"] += 1
            uid, iid = row["user_id"], row["item_id"]
            if uid.lower() in MISSING or iid.lower() in MISSING:
                report["rows_missing_ids_dropped"] += 1
                continue
            if iid not in catalog:
                raise ValueError(f":{line}: unknown item {iid!r}")
            rating = number(row["rating"], line, "rating") if "rating" in row else None
            ts = number(row["timestamp"], line, "timestamp") if "timestamp" in row else None
            key = (uid, iid, row.get("rating", ""), ts)  # the time as a number (the text before)
            if key in seen:
                report["duplicates_removed"] += 1
                continue
            seen.add(key)
            if rating is None:
                report["ratings_missing_filled"] += "rating" in row
                rating = 1.0
            elif not 0 <= rating <= 10:
                report["ratings_clipped"] += 1
                rating = min(max(rating, 0.0), 10.0)
            report["timestamps_missing_filled"] += ts is None and "timestamp" in row
            users.setdefault(uid, len(users))
            rows.append((uid, iid, rating, ts))
    except ValueError as e:
        return str(e)
    if not report["rows_read"]:
        return ": no data rows"
    known = [t for *_, t in rows if t is not None]
    base, gap, out = (max(known) if known else 0.0), 0, []
    for uid, iid, rating, ts in rows:  # a missing time: after the last known one, in file order
        gap += ts is None
        out.append((uid, iid, rating, base + gap if ts is None else ts))
    return list(users), out, report


MISSING = {"", "na", "nan", "null", "none"}
FIELDS = {
    "user_id": ["u1", "u2", " u3", "u3", "u4 ", "", "NA", "none", "\x1fu1", "u\u3000", '"u2"', '"a,b"'],
    "item_id": ["1", "2", "3", " 2", "", "null", "NULL"],
    "rating": ["5", "5.0", "3", "", "NA", " 4 ", "99", "-1", "1_0", "1e0", "nan"],
    "timestamp": ["100", "100.0", "200", "", "NaN", " nan", " 300", "1e2", "50", "-7", "None"],
    "note": ["", "x", '"a,b"', '"two\nlines"', " "],
}
BAD = {"item_id": ["42"], "rating": ["good", "inf"], "timestamp": ["x", "-nan", "inf"]}


@pytest.mark.parametrize("block", [4 << 20, 64])
def test_matches_the_row_reader_on_messy_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(interactions_reader, "_BLOCK", block)  # 64 bytes: a batch every few rows
    rng = random.Random(block)
    items = write(tmp_path, "items.csv", ITEMS)
    outcomes: Counter[str] = Counter()
    for _ in range(150):
        cols = ["user_id", "item_id"] + [c for c in ("rating", "timestamp", "note") if rng.random() < 0.7]
        lines = [",".join(cols)]
        for _ in range(rng.randint(0, 12)):
            r = rng.random()
            if r < 0.05:
                lines.append(rng.choice(["", "   ", ",".join(" " * len(cols))]))
            elif r < 0.07:
                lines.append(",".join("x" * (len(cols) + 1)))
            else:
                bad = rng.random() < 0.03
                lines.append(",".join(rng.choice(FIELDS[c] + (BAD.get(c, []) if bad else [])) for c in cols))
        text = "\n".join(lines) + rng.choice(["\n", ""])
        inter = write(tmp_path, "inter.csv", text)
        expected = reference_load(text, {"1", "2", "3"})
        if isinstance(expected, str):
            outcomes["error"] += 1
            with pytest.raises(DataError) as e:
                load_files(inter, items)
            assert f"inter.csv{expected}" in str(e.value), (text, expected, e.value)
            continue
        users, rows, report = expected
        if not rows:
            with pytest.raises(DataError, match="no usable interaction rows"):
                load_files(inter, items)
            continue
        outcomes["loaded"] += 1
        ds = load_files(inter, items)
        got = [
            (ds.users[u], ds.items[i].item_id, float(r), float(t))
            for u, i, r, t in zip(ds.user, ds.item, ds.rating, ds.timestamp, strict=True)
        ]
        assert (ds.users, got) == (users, rows), text
        assert {k: v for k, v in ds.report.to_json().items() if k in report} == report, text
    assert outcomes["error"] > 10 and outcomes["loaded"] > 30  # both paths were exercised


def test_parquet_catalog(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"Item_ID": [7, 8], "title": ["A", None], "genres": [["x", "y"], []]}), tmp_path / "c.pq"
    )
    ds = load_files(write(tmp_path, "inter.csv", "user_id,item_id\nu,8\nv,7\n"), tmp_path / "c.pq")
    assert [(it.item_id, it.title, it.categories) for it in ds.items] == [
        ("7", "A", ("x", "y")),
        ("8", "Item 8", ()),
    ]
    assert ds.item.tolist() == [1, 0] and ds.report.titles_missing_filled == 1
