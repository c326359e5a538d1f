"""The replay's split of MovieLens-100K by time, and the sample of the future replayed.

Row bookkeeping only: no model, no server, no metric.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from export.data import Dataset

GROUPS = ("known", "known_20plus", "new")
# ML-100K keeps only users with at least 20 ratings: a known user with 20 past
# events has a full-sized profile, so a lift there is no cold-start effect.
FULL_PROFILE = 20


@dataclass(frozen=True)
class Split:
    past: np.ndarray  # row indices of the training period, in time order
    future: np.ndarray  # row indices of the replayed period, in time order
    cut_time: float  # timestamp of the first future event
    known_users: frozenset[int]  # user indices with at least one past event


def time_order(ds: Dataset) -> np.ndarray:
    """Row indices by timestamp; time ties keep file order (stable)."""
    return np.lexsort((np.arange(len(ds)), ds.timestamp))


def time_split(ds: Dataset, future_frac: float) -> Split:
    """Global split: the last `future_frac` of all events by time are the future.

    Global, not per user: every model answer may only use what happened before
    the cut, like a model trained on a given day and served afterwards. Events
    that tie with the cut in time stay on the side their file position puts them.
    """
    if not 0.0 < future_frac < 1.0:
        raise ValueError(f"future_frac must be in (0, 1), got {future_frac}")
    order = time_order(ds)
    cut = len(order) - max(1, round(len(order) * future_frac))
    past, future = order[:cut], order[cut:]
    return Split(past, future, float(ds.timestamp[future[0]]), frozenset(ds.user[past].tolist()))


def past_dataset(ds: Dataset, rows: np.ndarray) -> Dataset:
    """The training data: only `rows`, users re-indexed, the whole item catalog.

    The catalog stays whole so that every future item has a row in the model
    (items first rated in the future keep their untrained factors and rank low,
    as a new catalog item would).
    """
    rows = np.sort(rows)  # file order, as a loader would give it
    names = [ds.users[u] for u in dict.fromkeys(ds.user[rows].tolist())]
    index = {n: i for i, n in enumerate(names)}
    user = np.asarray([index[ds.users[u]] for u in ds.user[rows]], dtype=np.int32)
    fp = hashlib.sha256(f"{ds.fingerprint}:rows:{len(rows)}:{rows[-1]}".encode()).hexdigest()
    return Dataset(
        items=ds.items,
        users=names,
        user=user,
        item=ds.item[rows].copy(),
        rating=ds.rating[rows].copy(),
        timestamp=ds.timestamp[rows].copy(),
        source=f"{ds.source}, training period of a replay split",
        fingerprint=fp,
        report=ds.report,
        has_ratings=ds.has_ratings,
        has_timestamps=ds.has_timestamps,
    )


def sample_future(ds: Dataset, split: Split, max_events: int | None, seed: int) -> np.ndarray:
    """At most `max_events` future rows, whole users only, half the budget per group.

    Whole users: a user's events must be replayed as a sequence, or feedback
    has nothing to build on. Half per group: known users are the minority of
    the future period, and their lift is the question.
    """
    if max_events is None or max_events >= len(split.future):
        return split.future
    rng = np.random.default_rng(seed)
    users = ds.user[split.future]
    keep = np.zeros(len(split.future), dtype=bool)
    for known in (True, False):
        group = sorted({u for u in users.tolist() if (u in split.known_users) == known})
        budget, taken = max_events // 2, 0
        for u in rng.permutation(group):
            mask = users == u
            if taken and taken + int(mask.sum()) > budget:
                continue
            keep |= mask
            taken += int(mask.sum())
            if taken >= budget:
                break
    return split.future[keep]


def user_groups(n_past: int) -> list[str]:
    """The report groups a user's events count in (a known user may be in two)."""
    if n_past == 0:
        return ["new"]
    return ["known", "known_20plus"] if n_past >= FULL_PROFILE else ["known"]


def by_user(ds: Dataset, rows: np.ndarray) -> dict[int, np.ndarray]:
    """Rows grouped per user, each user's rows in the given (time) order."""
    out: dict[int, list[int]] = {}
    for r in rows.tolist():
        out.setdefault(int(ds.user[r]), []).append(r)
    return {u: np.asarray(rs, dtype=np.int64) for u, rs in out.items()}
