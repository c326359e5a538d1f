"""Synthetic interaction logs with a realistic long tail, for loading the exporter at real sizes.

`python -m tools.synthetic_interactions --rows N --out DIR [--seed 0] [--parquet]` writes

* `interactions.csv` (or `.parquet`): `user_id,item_id,rating,timestamp`, one row per
  interaction, in time order like an append-only log;
* `items.csv`: `item_id,title,categories`, the whole catalog: every item id used above is in it,
  and the far tail gets only a handful of rows (at 10M rows, a few dozen items get none).

The shape follows the issue "The export at real sizes": N/100 users and N/60 items; item
popularity is Zipf–Mandelbrot, p(rank) ∝ (rank + q)^-s over a random permutation of the items;
user activity is log-normal (every user has at least one row); ratings are 1–5 stars with the
MovieLens mix; timestamps are integer seconds, non-decreasing down the file, with exponential
gaps. Everything is vectorized numpy and deterministic for a seed.

This module does not model tastes, sessions, repeats or dirty data (duplicates, missing values):
it exercises the reader's speed and memory, not the model's quality or the cleaning rules
(`tools/synthetic_catalog.py` generates taste structure).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LOG = logging.getLogger(__name__)

GENRES = (
    "Action Adventure Animation Children Comedy Crime Documentary Drama Fantasy Film-Noir Horror "
    "Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
STAR_P = np.array([0.06, 0.11, 0.27, 0.34, 0.22])  # MovieLens-100K's 1..5 star mix


@dataclass(frozen=True)
class LogShape:
    """The issue's shape: N/100 users, N/60 items, a Zipf tail, log-normal users."""

    users_per_row: float = 1 / 100
    items_per_row: float = 1 / 60
    zipf_s: float = 1.0  # popularity exponent
    zipf_q: float = 10.0  # flattens the very head a little (Zipf–Mandelbrot offset)
    activity_sigma: float = 1.2  # log-normal spread of rows per user
    start: int = 1_600_000_000  # first timestamp (2020-09-13)
    mean_gap_s: float = 3.0  # mean seconds between consecutive rows


@dataclass
class InteractionLog:
    user: np.ndarray  # (n,) int64, 1-based user id
    item: np.ndarray  # (n,) int64, 1-based item id
    rating: np.ndarray  # (n,) int8, 1..5
    timestamp: np.ndarray  # (n,) int64 unix seconds, non-decreasing
    n_users: int
    n_items: int


def generate(rows: int, seed: int = 0, shape: LogShape = LogShape()) -> InteractionLog:
    assert rows >= 1, "rows must be positive"
    rng = np.random.default_rng(seed)
    n_users = min(rows, max(1, round(rows * shape.users_per_row)))
    n_items = max(1, round(rows * shape.items_per_row))

    # Rows per user: 1 each, the rest split by log-normal activity weights.
    activity = rng.lognormal(0.0, shape.activity_sigma, n_users)
    per_user = 1 + rng.multinomial(rows - n_users, activity / activity.sum())
    user = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), per_user)
    rng.shuffle(user)  # users interleave over time, as in a log

    # Item popularity by rank, ranks dealt to item ids at random (popular items are not id 1, 2, ...).
    # Counts per item then a shuffle: the same distribution as a draw per row, without a
    # 10M-way binary search over the catalog (4x faster at 10M rows).
    pop = (np.arange(1, n_items + 1) + shape.zipf_q) ** -shape.zipf_s
    per_item = rng.multinomial(rows, pop / pop.sum())
    item = np.repeat(rng.permutation(n_items).astype(np.int64) + 1, per_item)
    rng.shuffle(item)

    rating = (rng.choice(5, size=rows, p=STAR_P) + 1).astype(np.int8)
    gaps = rng.exponential(shape.mean_gap_s, rows)
    timestamp = shape.start + np.floor(np.cumsum(gaps)).astype(np.int64)
    return InteractionLog(user, item, rating, timestamp, n_users, n_items)


def catalog(n_items: int, seed: int = 0) -> dict[str, list[str]]:
    """item_id, title ("Item 123 (2001)": unique) and 1–3 `|`-separated genres per item."""
    rng = np.random.default_rng([seed, 1])  # its own stream: the catalog does not shift the log
    years = rng.integers(1950, 2025, n_items)
    n_genres = rng.integers(1, 4, n_items)
    picks = rng.integers(0, len(GENRES), (n_items, 3))
    ids = [str(i) for i in range(1, n_items + 1)]
    titles = [f"Item {i} ({y})" for i, y in zip(ids, years.tolist(), strict=True)]
    cats = [
        "|".join(dict.fromkeys(GENRES[g] for g in row[:k])) for row, k in zip(picks, n_genres, strict=True)
    ]
    return {"item_id": ids, "title": titles, "categories": cats}


def write(log: InteractionLog, out: Path, seed: int = 0, parquet: bool = False) -> Path:
    """Write the log and its catalog under `out`; returns the interactions file."""
    import pyarrow as pa  # the export extra; arrow's writers are C++, 10M rows in seconds
    import pyarrow.csv as pa_csv

    out.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {"user_id": log.user, "item_id": log.item, "rating": log.rating, "timestamp": log.timestamp}
    )
    if parquet:
        import pyarrow.parquet as pq

        # Ids are strings in the data format; integers would also load, but strings are the real case.
        ids = {c: table[c].cast(pa.string()) for c in ("user_id", "item_id")}
        table = table.set_column(0, "user_id", ids["user_id"]).set_column(1, "item_id", ids["item_id"])
        path = out / "interactions.parquet"
        pq.write_table(table, path)
    else:
        path = out / "interactions.csv"
        # Integers only, so no quoting is ever needed; arrow would quote the header, so write it here.
        with path.open("wb") as f:
            f.write((",".join(table.column_names) + "\n").encode())
            pa_csv.write_csv(table, f, pa_csv.WriteOptions(include_header=False, quoting_style="none"))
    items = pa.table(catalog(log.n_items, seed))
    pa_csv.write_csv(items, out / "items.csv", pa_csv.WriteOptions(quoting_style="needed"))
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, required=True, help="interaction rows to write")
    ap.add_argument("--out", type=Path, required=True, help="folder for interactions.* and items.csv")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parquet", action="store_true", help="interactions.parquet instead of .csv")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    log = generate(args.rows, args.seed)
    path = write(log, args.out, args.seed, args.parquet)
    LOG.info(
        "%s: %d rows, %d users, %d items (%d with interactions) in %.1f s",
        path,
        len(log.user),
        log.n_users,
        log.n_items,
        np.count_nonzero(np.bincount(log.item)),
        time.perf_counter() - t0,
    )


if __name__ == "__main__":
    main()
