"""`recgen reload`, `recgen rollback`, `recgen versions`: which model version serves.

Workers that are not pinned with --version follow the repository's SERVING
pointer and hot-swap within their --watch-interval (recgen/promotion.py has
the gate and the pointer; worker/swap.py the swap). These commands only
move the pointer, so they work the same for one box or many workers
sharing the repository volume.
"""

from __future__ import annotations

import argparse
import json
import sys

from recgen.promotion import (
    DEFAULT_KEEP,
    DEFAULT_TOLERANCE,
    GateRefused,
    prune,
    quality,
    rollback,
    serving_state,
)
from recgen.promotion import promote as promote_version
from recgen.repository import ModelRepository, RepositoryError


def add_gate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest relative drop of held-out HR@10 against the serving version that is accepted",
    )
    p.add_argument("--force", action="store_true", help="promote even if the quality gate refuses")
    p.add_argument("--keep", type=int, default=DEFAULT_KEEP, help="versions kept (plus serving + rollbacks)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reload", help="serve a model version (behind the quality gate)")
    p.add_argument("--models", required=True)
    p.add_argument("--version", default=None, help="version to serve (default: the newest)")
    add_gate_flags(p)
    p = sub.add_parser("rollback", help="serve the previous model version again")
    p.add_argument("--models", required=True)
    p = sub.add_parser("versions", help="list model versions, their quality and which one serves")
    p.add_argument("--models", required=True)


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "reload":
            try:
                d = promote_version(args.models, args.version, force=args.force, tolerance=args.tolerance)
            except GateRefused as e:
                print(f"recgen reload: not promoted: {e}", file=sys.stderr)
                return 1
            removed = prune(args.models, args.keep)
            print(json.dumps({**d.to_json(), "pruned": removed}))
            return 0
        if args.command == "rollback":
            print(json.dumps(rollback(args.models).to_json()))
            return 0
        repo = ModelRepository(args.models)
        serving, previous = serving_state(args.models)
        for v in repo.versions():
            mark = "serving" if v == serving else ("rollback" if v in previous else "")
            q = quality(repo, v)
            print(f"{v}  HR@10={'-' if q is None else f'{q:.4f}'}  {mark}")
        return 0
    except RepositoryError as e:
        print(f"recgen {args.command}: {e}", file=sys.stderr)
        return 2
