"""FAISS candidate retrieval: one search for a whole batch of user vectors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np

LOG = logging.getLogger(__name__)


class Retriever:
    def __init__(self, path: Path, params: dict[str, Any], threads: int) -> None:
        # OpenMP threads are per process: set before the first search. A
        # single query is slower with 2 threads than 1 (STACK.md), batches gain.
        faiss.omp_set_num_threads(max(1, threads))
        self.index = faiss.read_index(str(path))
        if "efSearch" in params and hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = int(params["efSearch"])
        if "nprobe" in params and hasattr(self.index, "nprobe"):
            self.index.nprobe = int(params["nprobe"])
        self.ntotal = int(self.index.ntotal)
        self.mips_to_l2 = bool(params.get("mips_to_l2", False))

    def search(self, user_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, d) -> distances (B, k), rows (B, k); rows are -1 where fewer exist.

        Only the rows are used: the scorer computes the ranking scores."""
        k = max(1, min(k, self.ntotal))
        q = np.ascontiguousarray(user_vectors, dtype=np.float32)
        if self.mips_to_l2:  # the index holds items lifted to d+1 dims (export/index.py)
            q = np.hstack([q, np.zeros((q.shape[0], 1), np.float32)])
        return self.index.search(q, k)
