"""Interaction columns checked against the catalog and cleaned into a `Dataset` (`build_dataset`).

Rows without an id are dropped; the first other bad row (unknown item, non-numeric or non-finite
rating or time) raises the row reader's `DataError` for that row's line. Exact duplicates are
removed, users numbered by first appearance among the rows kept, missing ratings and times
filled, ratings clipped, and all of it counted in the `CleaningReport`.

This module reads no file (its input is an `_Interactions` from export.interactions_reader), and
does not split or train.
"""

from __future__ import annotations

import numpy as np

from export.data_files import _MISSING, DataError, _number, _require
from export.dataset import CleaningReport, Dataset
from export.dedup import _repeats
from export.interaction_columns import _lookup
from export.interactions_reader import _Interactions
from recgen.repository import CatalogItem

_FAR_FUTURE = 4102444800.0  # 2100-01-01


def _explain(inter: _Interactions, row: int, index: dict[str, int]) -> DataError:
    """The message for the first bad row, from its fields, by the row reader's own checks."""
    lineno, rec = inter.record(row)
    iid = rec["item_id"]
    if iid not in index:
        return DataError(f"{inter.name}:{lineno}: unknown item {iid!r} (not in the item catalog)")
    for column in ("rating", "timestamp"):
        if column in rec:
            _number(rec[column], inter.name, lineno, column)  # raises
    return DataError(f"{inter.name}:{lineno}: unusable row {rec}")  # pragma: no cover - readers disagree


def _usable_rows(inter: _Interactions, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(item, valid): each row's catalog row, and whether the row has both ids. Rows without an
    id are dropped unchecked, as before; the first other row with a problem raises its error."""
    assert inter.user is not None and inter.item is not None
    user_missing = np.array([u.lower() in _MISSING for u in inter.user.values], bool)  # per distinct id
    to_catalog = np.array(
        [-2 if i.lower() in _MISSING else index.get(i, -1) for i in inter.item.values], np.int32
    )
    item = _lookup(to_catalog, inter.item.codes)  # -1: not in the catalog, -2: missing
    valid = ~user_missing[inter.user.codes] & (item != -2)
    problem = valid & (item < 0)
    for numbers in (inter.rating, inter.timestamp):
        if numbers is not None:
            problem |= valid & numbers.per_row(numbers.bad)
    if problem.any():
        raise _explain(inter, int(np.argmax(problem)), index)
    return item, valid


def _number_users(
    user: np.ndarray, names: list[str], renumber: bool
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(user, names, interactions per user), users numbered by first appearance among the rows
    kept, as a row-by-row reader does. Dictionary codes already are, unless a dropped row held
    some user's first appearance (`renumber`) or some id is on no row kept."""
    counts = np.bincount(user, minlength=len(names))
    if renumber or not counts.all():
        first = np.full(len(names), len(user), np.int64)
        np.minimum.at(first, user, np.arange(len(user), dtype=np.int64))
        order = np.argsort(first, kind="stable")[: int((first < len(user)).sum())]
        new = np.full(len(names), -1, np.int32)
        new[order] = np.arange(len(order), dtype=np.int32)
        user, names, counts = new[user], [names[j] for j in order], counts[order]
    return np.ascontiguousarray(user, dtype=np.int32), names, counts


def build_dataset(
    inter: _Interactions, items: list[CatalogItem], source: str, fingerprint: str, report: CleaningReport
) -> Dataset:
    """The interactions, checked and cleaned, as a Dataset over `items`; `inter` is used up."""
    _require(inter.name, inter.columns, ["user_id", "item_id"])
    assert inter.user is not None
    report.rows_read = inter.n
    item, valid = _usable_rows(inter, {it.item_id: i for i, it in enumerate(items)})

    rows = None if valid.all() else np.flatnonzero(valid)
    user, rating, timestamp = inter.user.codes, inter.rating, inter.timestamp
    if rows is not None:
        user, item = user[rows], item[rows]
        rating = rating.rows(rows) if rating is not None else None
        timestamp = timestamp.rows(rows) if timestamp is not None else None
    # Ratings compare as text, as always; timestamps as numbers, whichever way they were read.
    keys = [user, item]
    keys += [rating.key(by_text=True)] if rating is not None else []
    keys += [timestamp.key(by_text=False)] if timestamp is not None else []
    repeat = _repeats(keys)
    del keys
    report.rows_missing_ids_dropped = inter.n - len(user)
    report.duplicates_removed = int(repeat.sum())
    if report.duplicates_removed:
        keep = ~repeat
        user, item = user[keep], item[keep]
        rating = rating.rows(keep) if rating is not None else None
        timestamp = timestamp.rows(keep) if timestamp is not None else None
    del repeat
    if len(user) == 0:
        raise DataError(f"{inter.name}: no usable interaction rows")
    user, names, counts = _number_users(user, inter.user.values, renumber=rows is not None)

    if rating is not None:  # on the distinct ratings where there is a table of them
        value, missing = rating.value, rating.missing
        report.ratings_missing_filled = rating.count(missing)
        report.ratings_clipped = rating.count((value < 0) | (value > 10))
        rating_out = rating.per_row(np.where(missing, 1.0, np.clip(value, 0.0, 10.0)).astype(np.float32))
    else:
        rating_out = np.ones(len(user), np.float32)

    if timestamp is not None:
        missing = timestamp.per_row(timestamp.missing)
        ts = timestamp.per_row(timestamp.value)  # this module's own array, or a fresh one: filled in place
        report.timestamps_missing_filled = int(missing.sum())
    else:
        missing, ts = np.ones(len(user), bool), np.full(len(user), np.nan)
    if missing.any():
        # Without a time, file order is the only order we have: keep it.
        base = ts[~missing].max() if not missing.all() else 0.0
        ts[missing] = base + np.arange(1, int(missing.sum()) + 1)
    report.timestamp_outliers = int(((ts < 0) | (ts > _FAR_FUTURE)).sum())

    limit = counts.mean() + 5 * counts.std()
    report.heavy_users = [names[u] for u in np.flatnonzero(counts > limit)][:20]
    report.items_without_interactions = int((np.bincount(item, minlength=len(items)) == 0).sum())
    return Dataset(
        items=items,
        users=names,
        user=user,
        item=np.ascontiguousarray(item, dtype=np.int32),
        rating=rating_out,
        timestamp=ts,
        source=source,
        fingerprint=fingerprint,
        report=report,
        has_ratings=inter.rating is not None,
        has_timestamps=inter.timestamp is not None,
    )
