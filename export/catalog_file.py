"""Item catalogs: a CSV/TSV or Parquet file read row by row into `CatalogItem`s.

Catalogs are small next to the interactions, so they are read whole (the csv module, or pyarrow
to Python values for Parquet) and checked row by row: a missing title column, or an empty or
repeated item_id, raises `DataError` naming the line. Unknown titles are filled, and counted in
the `CleaningReport`.

This module does not read interaction files (export.interactions_reader does).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from export.data_files import (
    _MISSING,
    DataError,
    _csv_rows,
    _delimiter,
    _not_utf8,
    _parquet_text,
    _pyarrow,
    _require,
)
from export.dataset import CleaningReport
from recgen.repository import CatalogItem

_UNKNOWN_TITLES = {"unknown", "unkonwn"}  # ML-100K item 267 is titled "unkonwn"


@dataclass
class _Table:
    path: str
    columns: list[str]
    rows: list[tuple[int, dict[str, str]]]  # (line number, row)


def _read_csv_text(text: str, path: str, delimiter: str = ",") -> _Table:
    columns, rows = _csv_rows(io.StringIO(text), path, delimiter)
    table = _Table(path, columns, list(rows))
    if not table.rows:
        raise DataError(f"{path}: no data rows after the header")
    return table


def _read_parquet(path: Path) -> _Table:
    _pyarrow()
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable Parquet file: {e}") from e
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    columns = [c.lower() for c in table.column_names]
    data = [table.column(c).to_pylist() for c in table.column_names]
    rows = [
        (i + 2, dict(zip(columns, map(_parquet_text, vals), strict=True)))
        for i, vals in enumerate(zip(*data, strict=True))
    ]
    return _Table(str(path), columns, rows)  # line numbers as if a header were line 1


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
        raise _not_utf8(str(path), raw.count(b"\n", 0, e.start) + 1, e.start, e) from None
    return _read_csv_text(text, str(path), _delimiter(path))


def _split_categories(value: str) -> tuple[str, ...]:
    sep = "|" if "|" in value else (";" if ";" in value else None)
    parts = value.split(sep) if sep else value.split()
    return tuple(p.strip() for p in parts if p.strip())


def parse_items(table: _Table, report: CleaningReport) -> list[CatalogItem]:
    _require(table.path, table.columns, ["item_id"])
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
