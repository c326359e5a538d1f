"""Data files as bytes and as rows: `DataError`, the streaming check, and the row rules.

One streaming pass over an interactions file (`_scan`) hashes it, checks it is non-blank UTF-8 and
counts its line breaks. The csv module's view of a file (`_csv_rows`, `_file_rows`) gives column
names and each row with the physical line it starts on; with the field rules (missing markers,
`_number`) it is the row-by-row reader that every `DataError` message is worded by, whichever
reader found the problem.

This module does not read columns, parse catalogs or clean anything, and imports nothing from
the rest of the package, so every other data module can import it.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

_MISSING = {"", "na", "nan", "null", "none"}
_READ = 1 << 20  # bytes per read when hashing and checking UTF-8


class DataError(ValueError):
    """A data file cannot be used; the message names file, line and problem."""


@dataclass(frozen=True)
class _Source:
    """A data file, or its bytes (MovieLens comes out of a zip); `name` is what messages say."""

    name: str
    path: Path | None = None
    raw: bytes | None = None

    def open(self) -> IO[bytes]:
        return self.path.open("rb") if self.path is not None else io.BytesIO(self.raw or b"")


def _not_utf8(name: str, line: int, offset: int, e: UnicodeDecodeError) -> DataError:
    return DataError(
        f"{name}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {offset}: {e.reason})"
    )


def _scan(src: _Source) -> tuple[bytes, int]:
    """(sha256, line breaks) of the file, after checking it is non-blank UTF-8; one pass in
    bounded memory. Line breaks (LF or CR) bound the rows, so each column is allocated once.

    pyarrow is then told not to check UTF-8 again, and it never sees columns it is not asked for:
    this pass is what keeps "not UTF-8" an error anywhere in the file, as it was.
    """
    digest, decoder = hashlib.sha256(), codecs.getincrementaldecoder("utf-8")()
    offset, lines, breaks, blank = 0, 0, 0, True
    with src.open() as f:
        while chunk := f.read(_READ):
            digest.update(chunk)
            blank = blank and not chunk.strip()
            pending = len(decoder.getstate()[0])  # an unfinished character from the last chunk
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                at = max(0, e.start - pending)
                raise _not_utf8(src.name, lines + chunk.count(b"\n", 0, at) + 1, offset + at, e) from None
            lines += chunk.count(b"\n")
            breaks += chunk.count(b"\r")
            offset += len(chunk)
    if blank:
        raise DataError(f"{src.name}: empty file")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise _not_utf8(src.name, lines + 1, offset - len(e.object) + e.start, e) from None
    return digest.digest(), lines + breaks + 1


def _sha256(path: Path) -> bytes:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def _column_names(header: Iterable[str]) -> list[str]:
    return [h.strip().split(":")[0].lower() for h in header]  # "item_id:token" -> item_id


def _csv_rows(
    f: IO[str], name: str, delimiter: str
) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The csv module's view of a file: column names and (line, stripped fields), blank rows skipped."""
    reader = csv.reader(f, delimiter=delimiter)
    try:
        columns = _column_names(next(reader))
    except StopIteration:
        raise DataError(f"{name}: empty file (no header line)") from None

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        start = reader.line_num + 1  # the physical line a record starts on (quoted newlines span lines)
        for rec in reader:
            lineno, start = start, reader.line_num + 1
            if not rec or all(not c.strip() for c in rec):
                continue
            if len(rec) != len(columns):
                raise DataError(
                    f"{name}:{lineno}: expected {len(columns)} fields ({','.join(columns)}), found {len(rec)}"
                )
            yield lineno, {c: v.strip() for c, v in zip(columns, rec, strict=True)}

    return columns, rows()


def _file_rows(src: _Source, delimiter: str) -> Iterator[tuple[int, dict[str, str]]]:
    """The row reader over a whole file: slow, and used only to explain a problem the columns found."""
    with io.TextIOWrapper(src.open(), encoding="utf-8-sig", newline="") as f:
        yield from _csv_rows(f, src.name, delimiter)[1]


def _csv_header(src: _Source, delimiter: str) -> list[str]:
    with io.TextIOWrapper(src.open(), encoding="utf-8-sig", newline="") as f:
        return next(csv.reader(f, delimiter=delimiter), [])


def _require(name: str, found: list[str], needed: list[str]) -> None:
    missing = [c for c in needed if c not in found]
    if missing:
        raise DataError(f"{name}:1: missing column(s) {', '.join(missing)} (found: {', '.join(found)})")


def _number(value: str, name: str, lineno: int, column: str) -> float | None:
    if value.strip().lower() in _MISSING:
        return None
    try:
        x = float(value)
    except ValueError:
        raise DataError(f"{name}:{lineno}: non-numeric {column} {value!r}") from None
    if not math.isfinite(x):
        raise DataError(f"{name}:{lineno}: non-finite {column} {value!r}")
    return x


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() in (".tsv", ".inter", ".item") else ","


def _parquet_text(v: object) -> str:
    """A Parquet value as the row reader always spelled it (lists `|`-joined, nothing stripped)."""
    if v is None:
        return ""
    return "|".join(map(str, v)) if isinstance(v, list) else str(v)


def _pyarrow() -> Any:
    """pyarrow with its compute functions (a submodule `import pyarrow` alone does not load)."""
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401
    except ImportError as e:  # pragma: no cover - pyarrow is in the export extra
        raise DataError("reading interaction files needs pyarrow (pip install recgen[export])") from e
    return pyarrow
