"""Users' histories: the one definition of "what a user did" that export and serving share.

Two halves use it and must agree exactly, or the served answer is not the
model that was measured (served = trained):

- export writes each training user's history into the version
  (`write_user_histories`) and evaluates fold-in on the same weights
  (`fold_in_weights`);
- the worker reads the version's histories (`UserHistories`, memory-mapped),
  adds the live events the gateway sends, and folds in with the same weights.

Event weights decay with a half-life counted back from the user's *newest*
event, not from the wall clock: a data set from 1998 served in 2026 keeps its
weights, and the same history gives the same answer at any time of day. Only
the newest `cap` events count for the vector; every item the user ever
touched is kept for exclusion (`seen`).

Format (`<version>/users/`), CSR-style arrays that `np.load(mmap_mode="r")`
opens without reading them:

    ids.npy            (U,) bytes, UTF-8 user ids, sorted: row u of the arrays below
    hist_indptr.npy    (U+1,) int64
    hist_items.npy     (H,) int32 item rows, newest first per user, at most `cap` per user
    hist_weights.npy   (H,) float32 event weights before decay (training: 1 per interaction)
    hist_ts.npy        (H,) float64 event times (unix seconds)
    seen_indptr.npy    (U+1,) int64
    seen_items.npy     (S,) int32 every item row the user interacted with, sorted

This module knows nothing of gRPC, of the state store or of the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

HISTORY_CAP = 200  # events per user that count for the user vector (newest first)
HALF_LIFE_DAYS = 90.0  # an event's weight halves per this many days before the user's newest event
DECAY_FLOOR = 1e-3  # an old event fades but never vanishes: it still says what the user chose
USERS_DIR = "users"
FORMAT = 1


def decayed(weights: np.ndarray, ts: np.ndarray, half_life_days: float = HALF_LIFE_DAYS) -> np.ndarray:
    """Each event's weight times its decay, age counted from the newest of these events."""
    if ts.size == 0:
        return weights.astype(np.float64)
    age = np.maximum(float(ts.max()) - ts.astype(np.float64), 0.0)
    factor = np.maximum(0.5 ** (age / (half_life_days * 86400.0)), DECAY_FLOOR)
    return weights.astype(np.float64) * factor


def fold_in_weights(
    rows: np.ndarray,
    weights: np.ndarray,
    ts: np.ndarray,
    cap: int = HISTORY_CAP,
    half_life_days: float = HALF_LIFE_DAYS,
) -> tuple[np.ndarray, np.ndarray]:
    """Events newest first -> (item rows, summed decayed weights), one entry per item.

    rows/weights/ts: (n,) per event, newest first. Only the newest `cap` events
    count. The result keeps the order of each item's newest event (the prompt
    shows the newest history first) and drops items whose weight sums to ≤ 0.
    """
    rows, weights, ts = rows[:cap], weights[:cap], ts[:cap]
    if rows.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    w = decayed(weights, ts, half_life_days)
    uniq, first, inv = np.unique(rows, return_index=True, return_inverse=True)
    sums = np.bincount(inv.ravel(), weights=w, minlength=uniq.size)
    order = np.argsort(first, kind="stable")
    uniq, sums = uniq[order], sums[order]
    keep = sums > 0
    return uniq[keep].astype(np.int64), sums[keep].astype(np.float32)


def newest_first(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order grouping events by user, newest first within a user; time ties keep the
    later row (the later arrival) first, as the state store orders them (ts DESC, seq DESC)."""
    pos = np.arange(user.size)
    return np.lexsort((-pos, -ts, user))


@dataclass
class History:
    """One user's events, newest first (version-held and live, merged)."""

    rows: np.ndarray  # (n,) int64
    weights: np.ndarray  # (n,) float32, before decay
    ts: np.ndarray  # (n,) float64
    seen: np.ndarray  # (s,) int64 every item row interacted with (for exclusion)


def empty_history() -> History:
    none = np.zeros(0, np.int64)
    return History(none, np.zeros(0, np.float32), np.zeros(0, np.float64), none)


def merge_live(
    held: History, rows: np.ndarray, weights: np.ndarray, ts: np.ndarray, data_end: float
) -> History:
    """The version-held history plus live events (newest first) from the state store.

    A live event the version already holds (same item and time, at or before the
    version's data end: `export --feedback` folded it in) is not counted twice."""
    if rows.size and held.rows.size:
        old = ts <= data_end
        if old.any():
            held_keys = set(zip(held.rows.tolist(), held.ts.tolist(), strict=True))
            dup = np.fromiter(
                ((r, t) in held_keys for r, t in zip(rows.tolist(), ts.tolist(), strict=True)),
                bool,
                rows.size,
            )
            keep = ~(dup & old)
            rows, weights, ts = rows[keep], weights[keep], ts[keep]
    if rows.size == 0:
        return held
    all_rows = np.concatenate([rows, held.rows])
    all_ts = np.concatenate([ts, held.ts])
    order = np.argsort(-all_ts, kind="stable")  # live first among equal times: they arrived later
    return History(
        rows=all_rows[order],
        weights=np.concatenate([weights, held.weights])[order],
        ts=all_ts[order],
        seen=np.union1d(held.seen, rows),
    )


class UserHistories:
    """A version's training users' histories, memory-mapped; looked up by user id."""

    def __init__(self, directory: Path, n_items: int | None = None) -> None:
        d = Path(directory)
        self.ids = np.load(d / "ids.npy", mmap_mode="r")
        self.arrays = HistoryArrays(
            **{name: np.load(d / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}  # type: ignore[arg-type]
        )
        h, u = self.arrays, len(self.ids)
        assert h.hist_indptr.shape == (u + 1,) and h.seen_indptr.shape == (u + 1,), f"{d}: bad indptr"
        assert h.hist_items.shape == h.hist_weights.shape == h.hist_ts.shape, f"{d}: bad history arrays"
        if n_items is not None and h.seen_items.size:
            assert int(h.seen_items.max()) < n_items, f"{d}: item row beyond the catalog"

    @staticmethod
    def exists(version_path: Path) -> bool:
        return (Path(version_path) / USERS_DIR / "ids.npy").is_file()

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def index(self, user_id: str) -> int:
        """Row of the user, or -1 for a user the version does not know."""
        key = user_id.encode("utf-8")
        n = len(self.ids)
        if n == 0 or len(key) > self.ids.dtype.itemsize:
            return -1
        i = int(np.searchsorted(self.ids, key))
        return i if i < n and self.ids[i] == key else -1

    def get(self, user_id: str) -> History:
        u = self.index(user_id)
        if u < 0:
            return empty_history()
        h = self.arrays
        s, e = int(h.seen_indptr[u]), int(h.seen_indptr[u + 1])
        return History(*h.events(u), seen=np.asarray(h.seen_items[s:e], dtype=np.int64))


_ARRAYS = ("hist_indptr", "hist_items", "hist_weights", "hist_ts", "seen_indptr", "seen_items")


@dataclass
class HistoryArrays:
    """The CSR arrays of the format, in memory, rows in a chosen user order."""

    hist_indptr: np.ndarray  # (U+1,) int64
    hist_items: np.ndarray  # (H,) int32, newest first per user, ≤ cap each
    hist_weights: np.ndarray  # (H,) float32
    hist_ts: np.ndarray  # (H,) float64
    seen_indptr: np.ndarray  # (U+1,) int64
    seen_items: np.ndarray  # (S,) int32, sorted per user

    @staticmethod
    def build(
        user: np.ndarray,
        item: np.ndarray,
        ts: np.ndarray,
        n_users: int,
        weight: np.ndarray | None = None,
        cap: int = HISTORY_CAP,
    ) -> HistoryArrays:
        """From interaction rows in file order (user row, item row, time). Vectorized."""
        user = user.astype(np.int64)
        ts = ts.astype(np.float64)
        w = np.ones(user.size, np.float32) if weight is None else weight.astype(np.float32)
        order = newest_first(user, ts)
        ru = user[order]
        counts = np.bincount(ru, minlength=n_users)
        starts = np.concatenate([[0], np.cumsum(counts)])
        place = np.arange(ru.size) - starts[ru]  # 0 = the user's newest event
        keep = order[place < cap]
        hist_indptr = np.concatenate([[0], np.cumsum(np.minimum(counts, cap))]).astype(np.int64)
        n_cols = max(int(item.max(initial=0)) + 1, 1)
        pairs = np.unique(user * np.int64(n_cols) + item.astype(np.int64))  # sorted by user, then item
        seen_user = pairs // n_cols
        seen_indptr = np.concatenate([[0], np.cumsum(np.bincount(seen_user, minlength=n_users))])
        return HistoryArrays(
            hist_indptr=hist_indptr,
            hist_items=item[keep].astype(np.int32),
            hist_weights=w[keep],
            hist_ts=ts[keep],
            seen_indptr=seen_indptr.astype(np.int64),
            seen_items=(pairs % n_cols).astype(np.int32),
        )

    def counts(self) -> dict[str, int]:
        """Sizes, for the manifest."""
        users = int(self.hist_indptr.size - 1)
        return {
            "users": users,
            "history_events": int(self.hist_items.size),
            "seen_pairs": int(self.seen_items.size),
        }

    def events(self, u: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = int(self.hist_indptr[u]), int(self.hist_indptr[u + 1])
        return (
            np.asarray(self.hist_items[a:b], dtype=np.int64),
            np.asarray(self.hist_weights[a:b], dtype=np.float32),
            np.asarray(self.hist_ts[a:b], dtype=np.float64),
        )

    def fold_in(self, u: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """User u's (item rows, fold-in confidences c = 1 + α·w): what the worker folds in
        for a known user with no live events."""
        rows, w = fold_in_weights(*self.events(u))
        return rows, (1.0 + alpha * w).astype(np.float32)


def write_user_histories(
    directory: Path,
    user_ids: list[str],
    user: np.ndarray,
    item: np.ndarray,
    ts: np.ndarray,
    weight: np.ndarray | None = None,
    cap: int = HISTORY_CAP,
) -> HistoryArrays:
    """Write the format above from interaction rows (user index, item row, time) in file
    order; returns the arrays written (rows in sorted-id order)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    n_users = len(user_ids)
    keys = np.array([u.encode("utf-8") for u in user_ids], dtype=bytes) if n_users else np.zeros(0, "S1")
    by_id = np.argsort(keys, kind="stable")  # row in the files -> user index
    rank = np.empty(n_users, np.int64)
    rank[by_id] = np.arange(n_users)  # user index -> row in the files
    h = HistoryArrays.build(rank[user.astype(np.int64)], item, ts, n_users, weight, cap)
    np.save(d / "ids.npy", keys[by_id])
    for name in _ARRAYS:
        np.save(d / f"{name}.npy", getattr(h, name))
    return h
