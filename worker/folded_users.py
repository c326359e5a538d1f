"""The fold-in inputs and vector of each recently ranked user, kept for that user's next request.

A user's vector is a function of what the request carries (user id, forget time, live history,
seen ids) and of the loaded version (held history, item factors) only. A feed refreshed with no
new event asks for the same vector again, and rebuilding it was most of a worker's CPU for a
user with history: merging the held history with the live one and decaying it (~200 µs), then
the fold-in solve (~100 µs) (docs/perf/README.md, round 3). Keyed by those request fields, an
entry cannot go stale within its version; a new event, a forget or a new seen id is a new key.
The one catalog change that moves history rows, an added or re-embedded item, clears it
(worker/live_catalog.py); a new version gets a new LoadedModel and so a new cache.

What it does not do: decide what enters the key (worker/rank_rows.py), fold in (worker/ranking.py
fills `vector` the first time a job of the user is ranked), or hold users without history (their
job is cheap, and they would push out the users whose entries pay).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from worker.metrics import Metrics

CAPACITY = 4096  # users; an entry is its history arrays (≤ 200 events) and a d-vector: ~4 KB


@dataclass(eq=False)
class FoldedUser:
    rows: np.ndarray  # (H,) int64 item rows, newest first (fold_in_weights' order)
    weights: np.ndarray  # (H,) float32 decayed event weights
    seen: np.ndarray  # (S,) int64 every item row the user consumed
    vector: np.ndarray | None = None  # (d,) float32 once folded in; shared, never written in place


class FoldedUsers:
    """An LRU of FoldedUser by request key. Thread-safe: the event loop ranks small batches inline
    and the model thread ranks the rest (worker/service.py `rank_now`)."""

    def __init__(self, capacity: int = CAPACITY, metrics: Metrics | None = None) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, FoldedUser] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        # The worker's counters (recgen_worker_events_total{name="folded_user_hits"|"..._misses"}):
        # an operator's hit rate says whether the capacity fits the traffic's repeat users.
        self.metrics = metrics

    def get(self, key: Hashable, build: Callable[[], FoldedUser]) -> FoldedUser:
        with self._lock:
            f = self._entries.get(key)
            if f is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                if self.metrics is not None:
                    self.metrics.inc("folded_user_hits")
                return f
        f = build()  # outside the lock: a concurrent miss of the same key builds the same entry
        with self._lock:
            self.misses += 1
            if self.metrics is not None:
                self.metrics.inc("folded_user_misses")
            if f.rows.size and self.capacity > 0:
                self._entries[key] = f
                if len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        return f

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
