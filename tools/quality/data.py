"""The log a quality run measures on, and the train CSVs `recgen export` reads (tools/quality).

Loading goes through export.data (MovieLens-100K or the user's files); no
splitting and no model here.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Data:
    user: np.ndarray  # (n,) int64
    item: np.ndarray  # (n,) int64
    ts: np.ndarray  # (n,) float64
    rating: np.ndarray  # (n,) float64
    user_ids: list[str]
    items: list[Any]  # recgen.repository.CatalogItem, row order
    source: str

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.items)


def load_data(interactions: str | None, items: str | None, wheels: str) -> Data:
    from export.data import load_files, load_movielens100k

    if bool(interactions) != bool(items):
        raise SystemExit("python -m tools.quality: --interactions and --items go together")
    ds = load_files(interactions, items) if interactions else load_movielens100k(wheels)
    return Data(
        user=ds.user.astype(np.int64),
        item=ds.item.astype(np.int64),
        ts=ds.timestamp.astype(np.float64),
        rating=ds.rating.astype(np.float64),
        user_ids=list(ds.users),
        items=list(ds.items),
        source=ds.source,
    )


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def write_train(data: Data, rows: np.ndarray, directory: Path) -> tuple[Path, Path]:
    """train.csv (user_id,item_id,rating,timestamp; rows in file order) and items.csv."""
    directory.mkdir(parents=True, exist_ok=True)
    inter, items = directory / "train.csv", directory / "items.csv"
    with inter.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "rating", "timestamp"])
        for r in np.sort(rows).tolist():
            w.writerow(
                [
                    data.user_ids[data.user[r]],
                    data.items[data.item[r]].item_id,
                    _num(data.rating[r]),
                    _num(data.ts[r]),
                ]
            )
    with items.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "categories"])
        for it in data.items:
            w.writerow([it.item_id, it.title, "|".join(it.categories)])
    return inter, items
