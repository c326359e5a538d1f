"""The command line of `python -m tools.quality` (tools/quality.py).

Only argparse here, so `recgen` builds its parser without importing the
measurement and its dependencies (numpy, implicit)."""

from __future__ import annotations

import argparse


def add_quality_arguments(p: argparse.ArgumentParser) -> None:
    """`python -m tools.quality` (tools/quality.py runs it)."""
    p.add_argument("--interactions", help="CSV or Parquet: user_id,item_id[,rating,timestamp]")
    p.add_argument("--items", help="CSV or Parquet: item_id,title[,text,categories]")
    p.add_argument("--wheels", default=".cache/wheels", help="folder with the recbole wheel (MovieLens-100K)")
    p.add_argument("--quick", action="store_true", help="one random seed, 300 test users, 12 iALS configs")
    p.add_argument("--out", default="docs/quality.json")
    p.add_argument("--md", default="docs/quality.md", help="markdown report ('' for none)")
    p.add_argument("--max-users", type=int, default=None, help="evaluate at most this many test users")
    p.add_argument("--protocols", default="leave_last_one_out,random_80_20,global_time")
    p.add_argument("--keep", help="keep the work directories (train CSVs, versions, logs) here")
    p.add_argument(
        "--compare-grid",
        action="store_true",
        help="also export and serve each split with the export's previous tuning grid (before/after)",
    )
