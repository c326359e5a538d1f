"""Interaction files (CSV/TSV or Parquet) read into columns: an `_Interactions` per file.

pyarrow reads the file in blocks (CSV) or batches (Parquet) and only user_id, item_id, rating and
timestamp are kept, ids dictionary-encoded. A CSV timestamp is parsed by pyarrow where it can be,
and read again as text where only the text can tell (blank or "NA", " nan" or "-nan"). Rows the
csv module would skip (blank ones) are skipped, and a row of the wrong width raises the row
reader's `DataError`, naming its line. An `_Interactions` can re-read any one row as (line,
fields), so that later checks word their errors as the row reader did.

This module does not hash or UTF-8-check a CSV file (export.data_files._scan does that first, and
pyarrow is told not to check again), look ids up in the catalog, or drop and clean rows
(export.cleaning does).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.data_files import (
    _MISSING,
    DataError,
    _column_names,
    _csv_header,
    _file_rows,
    _parquet_text,
    _pyarrow,
    _Source,
)
from export.interaction_columns import (
    _blank,
    _encode,
    _FloatColumn,
    _Numbers,
    _parse,
    _Text,
    _TextColumn,
)

_BLOCK = 4 << 20  # bytes per CSV block: pyarrow reads several ahead; 16 MiB was no faster here
_PARQUET_ROWS = 1 << 20  # rows per Parquet batch


@dataclass
class _Interactions:
    """The interaction columns of one file, one entry per data row (blank rows already gone)."""

    name: str
    columns: list[str]
    n: int
    user: _Text | None
    item: _Text | None
    rating: _Numbers | None
    timestamp: _Numbers | None
    record: Callable[[int], tuple[int, dict[str, str]]]  # row -> (line, fields), for messages


_INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_NULL_SPELLINGS = sorted(  # every letter case of the missing markers: pyarrow matches nulls exactly
    {"".join(cs) for word in _MISSING for cs in itertools.product(*({c.lower(), c.upper()} for c in word))}
)


class _TimestampAsText(Exception):
    """pyarrow cannot parse some timestamp, or cannot tell a blank one from "NA": read it as text."""


def _release() -> None:
    """Hand the batches' memory back: pyarrow's allocator would keep it, and numpy (malloc) could
    never reuse it, so the columns would count twice at the peak that follows."""
    _pyarrow().default_memory_pool().release_unused()


def _csv_batches(src: _Source, delimiter: str, header: list[str], parse_timestamp: bool) -> Iterator[Any]:
    """The file a block at a time as columns: strings dictionary-encoded, the timestamp parsed
    when asked to. A row of the wrong width raises the row reader's DataError, naming the line."""
    pa = _pyarrow()
    import pyarrow.csv as pa_csv

    strings = pa.dictionary(pa.int32(), pa.string())
    names = _column_names(header)
    types = {
        h: pa.float64() if parse_timestamp and c == "timestamp" else strings
        for h, c in zip(header, names, strict=True)
    }
    wrong_width: list[object] = []

    def on_invalid(row: Any) -> str:
        # The csv module skips blank lines of any width; pyarrow only skips empty ones.
        if not row.text.replace(delimiter, "").replace('"', "").strip():
            return "skip"
        wrong_width.append(row)
        return "error"

    try:
        yield from pa_csv.open_csv(
            str(src.path) if src.path is not None else pa.BufferReader(src.raw),
            read_options=pa_csv.ReadOptions(block_size=_BLOCK),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=types, null_values=_NULL_SPELLINGS, strings_can_be_null=False, check_utf8=False
            ),
        )
    except pa.ArrowInvalid as e:
        if next(_file_rows(src, delimiter), None) is None:  # pyarrow refuses a header without a newline
            raise DataError(f"{src.name}: no data rows after the header") from None
        if wrong_width:
            for _ in _file_rows(src, delimiter):  # raises naming the line, as the row reader did
                pass
        elif parse_timestamp:
            raise _TimestampAsText from e
        raise DataError(f"{src.name}: {e}") from e


def _read_csv_interactions(src: _Source, delimiter: str, capacity: int) -> _Interactions:
    try:
        return _read_csv_columns(src, delimiter, capacity, parse_timestamp=True)
    except _TimestampAsText:
        pass  # out of the except block first, so the first try's columns are freed
    return _read_csv_columns(src, delimiter, capacity, parse_timestamp=False)


def _read_csv_columns(src: _Source, delimiter: str, capacity: int, parse_timestamp: bool) -> _Interactions:
    header = _csv_header(src, delimiter)
    names = _column_names(header)
    parse_timestamp = parse_timestamp and names.count("timestamp") == 1
    at = {c: i for i, c in enumerate(names)}  # a repeated name: the last one, as before
    text = {at[c]: _TextColumn(capacity) for c in _INTERACTION_COLUMNS if c in at}
    times = _FloatColumn(capacity) if parse_timestamp else None
    if times is not None:
        del text[at["timestamp"]]
    n = 0
    for batch in _csv_batches(src, delimiter, header, parse_timestamp):
        n += _add_csv_batch(batch, text, times, at.get("timestamp", -1))
    if n == 0:
        raise DataError(f"{src.name}: no data rows after the header")
    columns = {names[i]: col.finish() for i, col in text.items()}
    _release()
    timestamp = times.finish(nan_is_missing=False) if times is not None else None
    if "timestamp" in columns:
        timestamp = _parse(columns["timestamp"])

    def record(row: int) -> tuple[int, dict[str, str]]:
        return next(itertools.islice(_file_rows(src, delimiter), row, None))

    rating = _parse(columns["rating"]) if "rating" in columns else None
    return _Interactions(
        src.name, names, n, columns.get("user_id"), columns.get("item_id"), rating, timestamp, record
    )


def _add_csv_batch(batch: Any, text: dict[int, _TextColumn], times: _FloatColumn | None, ts_at: int) -> int:
    """Append one batch's rows but the blank ones; returns how many rows it kept."""
    encoded = {i: _encode(batch.column(i), strip=True) for i in text}
    # Rows whose every field is blank were skipped, uncounted, by the row reader: skip them too.
    # Columns not kept are looked at only while some row may still be blank (rarely past user_id).
    blank = np.ones(batch.num_rows, bool)
    others = [i for i in range(batch.num_columns) if i not in text and not (times is not None and i == ts_at)]
    for i in [*text, *others]:
        if not blank.any():
            break
        blank &= _blank(*(encoded[i] if i in text else _encode(batch.column(i), strip=True)))
    if times is not None:
        ts = batch.column(ts_at)
        if _pyarrow().compute.any(_pyarrow().compute.is_nan(ts)).as_py():
            raise _TimestampAsText  # " nan" is missing, "-nan" an error: only the text can tell
        if blank.any() and (blank & ts.is_null().to_numpy(zero_copy_only=False)).any():
            raise _TimestampAsText  # blank, or "NA"? Only the text can tell.
        blank[:] = False
    keep = ~blank if blank.any() else slice(None)
    for i, col in text.items():
        texts, codes = encoded[i]
        col.append(texts, codes[keep])
    if times is not None:
        times.append(batch.column(ts_at), keep)
    return int(batch.num_rows - blank.sum())


def _read_parquet_interactions(path: Path) -> _Interactions:
    pa = _pyarrow()
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        names = [c.lower() for c in schema.names]
        at = {c: i for i, c in enumerate(names)}
        wanted = [c for c in _INTERACTION_COLUMNS if c in at]
        strings = [schema.names[at[c]] for c in wanted if pa.types.is_string(schema.field(at[c]).type)]
        pf = pq.ParquetFile(path, read_dictionary=strings)  # strings as stored: dictionary pages
    except Exception as e:
        raise DataError(f"{path}: not a readable Parquet file: {e}") from e
    n = pf.metadata.num_rows
    if n == 0:
        raise DataError(f"{path}: no data rows")
    # A numeric time stays a number. Everything else, ratings included (a handful of distinct
    # values), goes by text: as the row reader spelled it, one byte a row for star ratings.
    ts_type = schema.field(at["timestamp"]).type if "timestamp" in at else None
    numeric_ts = ts_type is not None and bool(
        pa.types.is_integer(ts_type) or pa.types.is_floating(ts_type) or pa.types.is_decimal(ts_type)
    )
    floats = {"timestamp": _FloatColumn(n)} if numeric_ts else {}
    text = {c: _TextColumn(n) for c in wanted if c not in floats}
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_ROWS, columns=[schema.names[at[c]] for c in wanted]):
            arrays = {c.lower(): a for c, a in zip(batch.schema.names, batch.columns, strict=True)}
            for c, col in text.items():
                col.append(*_encode(arrays[c], strip=False))
            for c, fcol in floats.items():
                fcol.append(arrays[c])
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file: {e}") from e
    del pf, batch, arrays  # the reader's buffers, before they are handed back
    columns = {c: col.finish() for c, col in text.items()}
    _release()

    def numbers(c: str) -> _Numbers | None:
        if c in floats:
            return floats[c].finish(nan_is_missing=True)
        return _parse(columns[c]) if c in columns else None

    def record(row: int) -> tuple[int, dict[str, str]]:
        (values,) = pq.read_table(path).slice(row, 1).to_pylist()
        return row + 2, {k.lower(): _parquet_text(v) for k, v in values.items()}  # as if a header were line 1

    return _Interactions(
        str(path),
        names,
        n,
        columns.get("user_id"),
        columns.get("item_id"),
        numbers("rating"),
        numbers("timestamp"),
        record,
    )
