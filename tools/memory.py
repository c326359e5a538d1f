"""The memory a catalog costs a worker: a fresh process holding its factors and index.

    python -m tools.memory hold --dir D   # a fresh process holding D/item_factors.npy + D/items.faiss

`hold` loads what a worker holds for retrieval (the item factors, for
fold-in and scoring, and the FAISS index), runs the queries in D/queries.npy
through the index once, and prints a JSON line with its VmRSS and VmHWM
(peak) in kB, before and after loading: the memory a catalog of that size
costs a worker on top of its fixed part.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tools.harness.procfs import proc_mem


def hold(directory: Path, threads: int = 1) -> dict[str, object]:
    before = proc_mem()
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(threads)
    after_import = proc_mem()
    factors = np.load(directory / "item_factors.npy")
    index = faiss.read_index(str(directory / "items.faiss"))
    params = (
        json.loads((directory / "params.json").read_text()) if (directory / "params.json").is_file() else {}
    )
    if "efSearch" in params and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(params["efSearch"])
    loaded = proc_mem()
    q = np.load(directory / "queries.npy")
    if index.d == q.shape[1] + 1:  # MIPS -> L2 lift (export/index.py)
        q = np.hstack([q, np.zeros((len(q), 1), q.dtype)])
    index.search(np.ascontiguousarray(q[:256], dtype=np.float32), 100)
    return {
        "items": int(factors.shape[0]),
        "dim": int(factors.shape[1]),
        "index_type": type(index).__name__,
        "factors_bytes": int(factors.nbytes),
        "index_file_bytes": os.path.getsize(directory / "items.faiss"),
        "rss_start_kb": before.get("VmRSS_kb", 0),
        "rss_after_imports_kb": after_import.get("VmRSS_kb", 0),
        "rss_loaded_kb": loaded.get("VmRSS_kb", 0),
        "after_search": proc_mem(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.memory")
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hold", help="hold a catalog's factors and index; print its memory as JSON")
    h.add_argument("--dir", type=Path, required=True)
    h.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    print(json.dumps(hold(args.dir, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
