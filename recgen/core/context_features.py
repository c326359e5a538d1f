"""Request-context features as export learns them and the worker applies them.

A request carries its local hour (0..23) and weekday (0 = Monday .. 6); both
sides turn them into the same buckets, so the lift tables export fits
(`export.context_features`) are indexed at serve time (`worker.context`) the
way they were learned. -1 means unknown on both sides.

numpy only. This module fits nothing and reads no files.
"""

from __future__ import annotations

import numpy as np

HOUR_BUCKETS = 6  # 4-hour blocks of local time: 0-3, 4-7, ..., 20-23


def hour_bucket(hour: np.ndarray) -> np.ndarray:
    """Local hour 0..23 -> bucket; -1 (unknown) stays -1."""
    hour = np.asarray(hour, np.int64)
    return np.where(hour >= 0, hour * HOUR_BUCKETS // 24, -1)


def weekend_flag(weekday: np.ndarray) -> np.ndarray:
    """Weekday 0 = Monday .. 6 -> 1 on Saturday and Sunday, 0 otherwise; -1 stays -1."""
    weekday = np.asarray(weekday, np.int64)
    return np.where(weekday >= 0, (weekday >= 5).astype(np.int64), -1)
