"""What loading produces: a `Dataset` of interactions over an item catalog, and its `CleaningReport`.

Plain containers; export.data re-exports both, and the rest of the code imports them from there.
This module reads no file and checks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recgen.repository import CatalogItem


@dataclass
class CleaningReport:
    rows_read: int = 0
    duplicates_removed: int = 0
    rows_missing_ids_dropped: int = 0
    ratings_missing_filled: int = 0
    timestamps_missing_filled: int = 0
    ratings_clipped: int = 0
    titles_missing_filled: int = 0
    timestamp_outliers: int = 0
    heavy_users: list[str] = field(default_factory=list)  # > mean + 5 sd interactions
    items_without_interactions: int = 0

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class Dataset:
    """Interactions in file order over a catalog; ids are strings outside."""

    items: list[CatalogItem]  # row i of the item factors is items[i]
    users: list[str]
    user: np.ndarray  # (n,) int32 user index
    item: np.ndarray  # (n,) int32 item index
    rating: np.ndarray  # (n,) float32, 1.0 where the data has none
    timestamp: np.ndarray  # (n,) float64 seconds; file position where the data has none
    source: str
    fingerprint: str  # sha256 of the input bytes
    report: CleaningReport
    has_ratings: bool = True
    has_timestamps: bool = True

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def __len__(self) -> int:
        return int(self.user.shape[0])
