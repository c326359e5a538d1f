"""The columns interactions are held in, and builders that fill them a batch at a time.

`_Text` is a column of strings as int32 codes into its distinct values, numbered by first
appearance as a row-by-row reader would number them. `_Numbers` is a numeric column read the way
`float()` reads a field, per distinct text or per row. `_TextColumn` and `_FloatColumn` build
them from pyarrow batches without visiting rows (or most texts) in Python; `_encode` turns one
batch's column into (distinct texts, codes) spelled as the row reader spelled them.

This module does not open files (export.interactions_reader does) or decide which rows are kept
(export.cleaning does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from export.data_files import _MISSING, _parquet_text, _pyarrow

if TYPE_CHECKING:
    import pyarrow as pa

_ROWS = 1 << 20  # rows per block when remapping codes in place
_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())  # what str.strip() strips


@dataclass
class _Text:
    """A column of strings as codes into its distinct values, numbered by first appearance."""

    codes: np.ndarray  # (n,) int32
    values: list[str]  # distinct, stripped for CSV


@dataclass
class _Numbers:
    """A numeric column read the way `float()` reads a field.

    Per distinct text with `codes` (ratings: a handful of values), or per row with `codes` None
    (timestamps, which pyarrow parses itself: one value per row, so no table is worth building).
    """

    value: np.ndarray  # float64, NaN where missing or not a number
    missing: np.ndarray  # bool: blank or a missing marker ("na", "null", ...)
    bad: np.ndarray  # bool: not a number, or not finite: an error on any row that is used
    codes: np.ndarray | None = None  # (n,) into the arrays above

    def per_row(self, a: np.ndarray) -> np.ndarray:
        return a if self.codes is None else a[self.codes]

    def count(self, mask: np.ndarray) -> int:
        """Rows where `mask` (shaped like `value`) holds."""
        if self.codes is None:
            return int(mask.sum())
        return int(np.bincount(self.codes, minlength=len(mask))[mask].sum())

    def key(self, by_text: bool) -> np.ndarray:
        """(n,) ints, equal where two rows count as duplicates: the same text when there is a table
        of texts and `by_text`, else the same value (all missing values are one)."""
        if by_text and self.codes is not None:
            return self.codes
        value = np.where(self.missing, np.nan, self.value) if self.missing.any() else self.value
        return self.per_row(value).view(np.int64)

    def rows(self, keep: np.ndarray) -> _Numbers:
        if self.codes is not None:
            return _Numbers(self.value, self.missing, self.bad, self.codes[keep])
        return _Numbers(self.value[keep], self.missing[keep], self.bad[keep])


def _lookup(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """codes[:] = table[codes], a block at a time (np.take into its own input copies it whole)."""
    for start in range(0, len(codes), _ROWS):
        part = codes[start : start + _ROWS]
        part[:] = table[part]
    return codes


def _encode(arr: pa.Array, strip: bool) -> tuple[pa.Array, np.ndarray]:
    """(texts, codes) of one batch: its distinct values as the row reader spelled them, and
    (len(arr),) int32 codes into those (after stripping, two texts may be equal: fine)."""
    pa = _pyarrow()
    if pa.types.is_dictionary(arr.type) and arr.null_count:
        arr = arr.cast(arr.type.value_type)
    if not pa.types.is_dictionary(arr.type):  # Parquet: strings, integers...; null is one more value
        arr = pa.compute.dictionary_encode(arr, null_encoding="encode")
    texts = arr.dictionary
    if pa.types.is_integer(texts.type) or pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.string())  # pyarrow spells integers as str() does
    elif not pa.types.is_string(texts.type):  # floats, dates, lists: str() and pyarrow differ
        texts = pa.array([_parquet_text(v) for v in texts.to_pylist()], pa.string())
    texts = texts.fill_null("")
    if strip:
        texts = pa.compute.utf8_trim(texts, characters=_WHITESPACE)
    return texts, arr.indices.to_numpy(zero_copy_only=False)


def _blank(texts: pa.Array, codes: np.ndarray) -> np.ndarray:
    """(rows,) bool: the field is empty (once stripped)."""
    return _pyarrow().compute.equal(texts, "").to_numpy(zero_copy_only=False)[codes]


class _TextColumn:
    """Builds a `_Text` a batch at a time, without visiting rows (or most texts) in Python.

    A batch keeps its own small dictionary, values in order of first appearance, and its rows'
    codes into it. `finish` encodes all the dictionaries at once, concatenated in batch order, so
    the final codes number the whole column by first appearance, as a row-by-row reader would.
    Codes go straight into one array sized for the whole file: no per-batch pieces to join.
    """

    def __init__(self, capacity: int) -> None:
        self.codes = np.empty(capacity, np.int32)  # pages never written are never resident
        self.n = 0
        self.texts: list[pa.Array] = []  # per batch: its distinct texts
        self.rows: list[int] = []  # per batch: rows kept

    def append(self, texts: pa.Array, codes: np.ndarray) -> None:
        assert self.n + len(codes) <= len(self.codes), "more rows than line breaks"
        self.codes[self.n : self.n + len(codes)] = codes
        self.n += len(codes)
        self.texts.append(texts)
        self.rows.append(len(codes))

    def finish(self) -> _Text:
        pa = _pyarrow()
        codes = self.codes[: self.n]
        if not self.texts:
            return _Text(codes, [])
        # Each batch's texts -> final code: one hash pass in C++ over a few texts per row.
        merged = pa.compute.dictionary_encode(pa.concat_arrays(self.texts))
        to_code = merged.indices.to_numpy(zero_copy_only=False)
        row = entry = 0
        for texts, rows in zip(self.texts, self.rows, strict=True):
            _lookup(to_code[entry : entry + len(texts)], codes[row : row + rows])
            row, entry = row + rows, entry + len(texts)
        self.texts = []
        return _Text(codes, merged.dictionary.to_pylist())


class _FloatColumn:
    """Builds a per-row `_Numbers` a batch at a time from a column pyarrow parsed itself."""

    def __init__(self, capacity: int) -> None:
        self.value = np.empty(capacity)
        self.missing = np.empty(capacity, bool)
        self.n = 0

    def append(self, arr: pa.Array, keep: np.ndarray | slice = slice(None)) -> None:
        arr = arr.cast(_pyarrow().float64())
        value = arr.to_numpy(zero_copy_only=False)[keep]  # NaN where null
        assert self.n + len(value) <= len(self.value), "more rows than line breaks"
        self.value[self.n : self.n + len(value)] = value
        self.missing[self.n : self.n + len(value)] = (
            arr.is_null().to_numpy(zero_copy_only=False)[keep] if arr.null_count else False
        )
        self.n += len(value)

    def finish(self, nan_is_missing: bool) -> _Numbers:
        value, missing = self.value[: self.n], self.missing[: self.n]
        if nan_is_missing:  # a float NaN in Parquet was the text "nan" to the row reader: missing
            missing |= np.isnan(value)
        return _Numbers(value, missing, ~missing & ~np.isfinite(value))


def _parse(text: _Text) -> _Numbers:
    n = len(text.values)
    value, missing, bad = np.full(n, np.nan), np.zeros(n, bool), np.zeros(n, bool)
    for j, t in enumerate(text.values):  # distinct values only: Python's own float() rules
        if t.strip().lower() in _MISSING:
            missing[j] = True
            continue
        try:
            value[j] = float(t)
        except ValueError:
            bad[j] = True
            continue
        bad[j] = not math.isfinite(value[j])
    codes = text.codes.astype(np.min_scalar_type(n), copy=False)  # one byte a row for star ratings
    return _Numbers(value, missing, bad, codes)
