"""Train/test splits of an interaction log, by protocol (tools/quality).

Rows are indices into the log; a split never looks at ratings, and it does
not fit or score anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEST_FRAC = 0.2
PROTOCOLS = ("leave_last_one_out", "random_80_20", "global_time")


@dataclass
class Split:
    """Train rows (indices into the dataset) and each test user's test items."""

    train_rows: np.ndarray  # sorted
    test_users: np.ndarray  # (m,) user indices
    test_items: list[np.ndarray]  # per test user: unique item indices, none in the user's train rows


def _rows(n: int, rows: np.ndarray | None) -> np.ndarray:
    return np.arange(n, dtype=np.int64) if rows is None else np.sort(np.asarray(rows, dtype=np.int64))


def _finish(user: np.ndarray, item: np.ndarray, train: np.ndarray, test: np.ndarray) -> Split:
    """Group test rows by user; keep users with a train row and a test item not in their train."""
    train = np.sort(train)
    seen = set(zip(user[train].tolist(), item[train].tolist(), strict=True))
    has_train = set(user[train].tolist())
    by_user: dict[int, set[int]] = {}
    for u, i in zip(user[test].tolist(), item[test].tolist(), strict=True):
        if u in has_train and (u, i) not in seen:
            by_user.setdefault(u, set()).add(i)
    users = sorted(by_user)
    return Split(
        train_rows=train,
        test_users=np.asarray(users, dtype=np.int64),
        test_items=[np.asarray(sorted(by_user[u]), dtype=np.int64) for u in users],
    )


def leave_last_one_out(
    user: np.ndarray, item: np.ndarray, ts: np.ndarray, rows: np.ndarray | None = None
) -> Split:
    """Each user's last row by time (ties: the later file row) is test; users with >= 2 rows."""
    rows = _rows(len(user), rows)
    order = rows[np.lexsort((rows, ts[rows], user[rows]))]
    u = user[order]
    last = np.ones(order.size, dtype=bool)
    last[:-1] = u[:-1] != u[1:]
    counts = np.bincount(u, minlength=int(user.max(initial=-1)) + 1) if u.size else np.zeros(0, np.int64)
    test_mask = last & (counts[u] >= 2)
    return _finish(user, item, order[~test_mask], order[test_mask])


def random_split(
    user: np.ndarray, seed: int, frac: float = TEST_FRAC, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per user, a random `frac` of the rows (round half up, >= 1, leaving >= 1) -> (train, test)."""
    rows = _rows(len(user), rows)
    keys = np.random.default_rng(seed).random(rows.size)
    order = rows[np.lexsort((keys, user[rows]))]
    u = user[order]
    start = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1] if u.size else np.zeros(0, np.int64)
    size = np.diff(np.r_[start, u.size])
    n_test = np.where(size >= 2, np.clip(np.floor(frac * size + 0.5), 1, size - 1), 0).astype(np.int64)
    rank = np.arange(u.size) - np.repeat(start, size)
    test_mask = rank < np.repeat(n_test, size)
    return order[~test_mask], order[test_mask]


def random_80_20(
    user: np.ndarray, item: np.ndarray, seed: int, frac: float = TEST_FRAC, rows: np.ndarray | None = None
) -> Split:
    train, test = random_split(user, seed, frac, rows)
    return _finish(user, item, train, test)


def global_time(
    user: np.ndarray,
    item: np.ndarray,
    ts: np.ndarray,
    frac: float = TEST_FRAC,
    rows: np.ndarray | None = None,
) -> Split:
    """The newest `frac` of the rows by time (ties: file order) are test."""
    rows = _rows(len(user), rows)
    order = rows[np.lexsort((rows, ts[rows]))]
    n_test = int(np.floor(frac * order.size + 0.5))
    cut = order.size - n_test
    return _finish(user, item, order[:cut], order[cut:])


def make_split(
    protocol: str,
    user: np.ndarray,
    item: np.ndarray,
    ts: np.ndarray,
    seed: int,
    rows: np.ndarray | None = None,
) -> Split:
    if protocol == "leave_last_one_out":
        return leave_last_one_out(user, item, ts, rows)
    if protocol == "random_80_20":
        return random_80_20(user, item, seed, rows=rows)
    if protocol == "global_time":
        return global_time(user, item, ts, rows=rows)
    raise ValueError(protocol)


def validation_split(
    protocol: str, user: np.ndarray, item: np.ndarray, ts: np.ndarray, split: Split, seed: int
) -> Split:
    """Carved from the train part only, the same way as the protocol (another seed when random)."""
    return make_split(protocol, user, item, ts, seed + 1000, rows=split.train_rows)
