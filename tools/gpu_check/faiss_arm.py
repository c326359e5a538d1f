"""Does FAISS on the GPU pay? Exact (flat, inner product) search at the default and a 1M catalog.

64-d unit vectors (the served item factors' shape), 100 results, batch 1 (one
Recommend) and batch 64 (a full ranking batch), CPU against GPU in the same run.
The GPU half runs only where this faiss has GPU support (faiss-gpu*, not the
faiss-cpu the serving set installs); otherwise it is reported skipped, and the
CPU half still gives the baseline. Random vectors: timing does not depend on them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

DIM = 64
K = 100


def _qps(index: Any, queries: np.ndarray, batch: int, seconds: float) -> float:
    n = done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        q = queries[(n * batch) % (len(queries) - batch) :][:batch]
        index.search(q, K)
        n += 1
        done += batch
    return done / (time.perf_counter() - t0)


def run(sizes: Sequence[int], threads: int, seconds: float = 1.0) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(threads)
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    gpu_skip = None if gpus > 0 else "this faiss has no GPU support (faiss-cpu; get_num_gpus() = 0)"
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((512, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows = []
    for n in sizes:
        x = rng.standard_normal((n, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        cpu = faiss.IndexFlatIP(DIM)
        cpu.add(x)
        row: dict[str, Any] = {"items": n}
        for b in (1, 64):
            row[f"cpu_qps_batch{b}"] = round(_qps(cpu, queries, b, seconds), 1)
        if gpu_skip is None:
            res = faiss.StandardGpuResources()
            gpu = faiss.index_cpu_to_gpu(res, 0, cpu)
            gpu.search(queries[:64], K)  # warm-up
            for b in (1, 64):
                row[f"gpu_qps_batch{b}"] = round(_qps(gpu, queries, b, seconds), 1)
        rows.append(row)
        del x, cpu
    return {
        "faiss": faiss.__version__,
        "gpus": gpus,
        "gpu_skipped": gpu_skip,
        "k": K,
        "dim": DIM,
        "rows": rows,
    }
