"""The past of a replay split as events in a fresh state store (arms (a) and (b) build on it).

Writes the DB only; the server that reads it is started elsewhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from export.data import Dataset


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def past_events(ds: Dataset, rows: np.ndarray, prefix: str = "") -> list[Any]:
    """The past as RATE events (value = rating, ts = event time) of `prefix + user`."""
    from server.state import Event

    tag = prefix or "real:"
    return [
        Event(
            event_id=f"past:{tag}{r}",
            user_id=prefix + ds.users[ds.user[r]],
            item_id=ds.items[ds.item[r]].item_id,
            type="RATE",
            value=float(ds.rating[r]),
            ts=float(ds.timestamp[r]),
        )
        for r in rows.tolist()
    ]


def load_state(path: Path, ds: Dataset, past: np.ndarray) -> int:
    """A fresh state DB with each past event twice: under the real user id (arm b
    builds on it) and under "static:<id>" (arm a, which never gets feedback)."""
    from server.state import open_store

    store = open_store(path, synchronous="NORMAL")  # a throwaway DB: no need to fsync
    try:
        return store.add_events_bulk_sync(past_events(ds, past) + past_events(ds, past, "static:"))
    finally:
        store.close()
