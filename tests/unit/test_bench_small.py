"""Smoke test of the benchmark's synthetic catalog and retrieval bench at a tiny size.

Checks the structure the catalog is meant to have and the bookkeeping of the
retrieval bench; never a speed (speed claims live in `make bench`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recgen.core.foldin import FoldIn
from tools.retrieval_bench import bench_catalog, run
from tools.synthetic_catalog import (
    SyntheticConfig,
    extend_catalog,
    fit_catalog,
    fold_in_rows,
    make_universe,
    popularity_stats,
    user_queries,
)

ROOT = Path(__file__).resolve().parents[2]

TINY = SyntheticConfig(
    n_universe=6000, n_fit=1500, n_users=800, n_clusters=12, factors=16, iterations=3, seed=1, zipf_q=10.0
)


@pytest.fixture(scope="module")
def tiny() -> tuple:
    rng = np.random.default_rng(TINY.seed)
    uni = make_universe(TINY, rng)
    fit = fit_catalog(TINY, uni, rng)
    return uni, fit, rng


def test_universe_has_skewed_popularity_and_clusters(tiny: tuple) -> None:
    uni, fit, _ = tiny
    assert uni.popularity.shape == (TINY.n_universe,)
    assert abs(uni.popularity.sum() - 1.0) < 1e-9
    assert uni.popularity.max() > 20 * np.median(uni.popularity)  # Zipf-like head
    assert len(np.unique(uni.item_cluster)) == TINY.n_clusters
    # Interactions of the fit: every item has at least the minimum, the head takes a large share.
    assert fit.n_interactions >= TINY.min_item_interactions * TINY.n_fit
    assert fit.stats["top_1pct_items_share"] > 0.05
    assert fit.item_factors.shape == (TINY.n_fit, TINY.factors)
    assert np.isfinite(fit.item_factors).all()
    assert (np.linalg.norm(fit.item_factors, axis=1) > 0).all()


def test_items_of_a_cluster_are_closer_than_others(tiny: tuple) -> None:
    uni, fit, _ = tiny
    x = fit.item_factors / np.linalg.norm(fit.item_factors, axis=1, keepdims=True)
    cl = uni.item_cluster[fit.items]
    sim = x @ x.T
    same = cl[:, None] == cl[None, :]
    np.fill_diagonal(same, False)
    other = cl[:, None] != cl[None, :]
    assert sim[same].mean() > sim[other].mean() + 0.1


def test_extension_and_queries(tiny: tuple) -> None:
    uni, fit, rng = tiny
    full = extend_catalog(TINY, uni, fit, rng)
    assert full.shape == (TINY.n_universe, TINY.factors)
    np.testing.assert_array_equal(full[fit.items], fit.item_factors)
    assert np.isfinite(full).all() and (np.linalg.norm(full, axis=1) > 0).all()
    q = user_queries(TINY, uni, np.arange(TINY.n_universe), full, 50, rng)
    assert q.shape == (50, TINY.factors) and np.isfinite(q).all()


def test_fold_in_rows_is_the_workers_fold_in() -> None:
    rng = np.random.default_rng(0)
    f = (rng.standard_normal((300, 16)) * 0.3).astype(np.float32)
    hist = [rng.choice(300, size=int(n), replace=False) for n in rng.integers(1, 40, size=60)]
    ours = fold_in_rows(f, 0.05, hist, 2.0, budget=200, max_rows=7)  # many chunks, both solve paths
    ref = FoldIn(f, 0.05).user_vectors([(h, np.full(len(h), 3.0, np.float32)) for h in hist])
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)


def test_popularity_stats() -> None:
    s = popularity_stats(np.array([0, 0, 0, 0, 1, 2]), 100)
    assert s["interactions"] == 6 and s["max_item_count"] == 4
    assert s["top_1pct_items_share"] == pytest.approx(4 / 6, abs=1e-3)


def test_bench_catalog_exact_and_hnsw(tiny: tuple) -> None:
    uni, fit, rng = tiny
    q = user_queries(TINY, uni, fit.items, fit.item_factors, 120, rng)
    row = bench_catalog("tiny", fit.item_factors, q[:60], q[60:], min_time=0.01, single_queries=20)
    row.pop("_index")
    assert row["index"] == "flat" and row["recall_at_100"] == 1.0
    # The certified norm-bounded search falls back to exact search where it cannot prove its answer.
    assert row["norm_bounded"] and all(nb["recall_at_100"] >= 0.999 for nb in row["norm_bounded"])
    assert row["index_qps_batch1"] > 0 and row["exact_qps_batched"] > 0
    forced = bench_catalog(
        "tiny hnsw", fit.item_factors, q[:60], q[60:], exact_max_items=0, min_time=0.01, single_queries=20
    )
    forced.pop("_index")
    assert forced["hnsw_curve"], "the HNSW build_index built is measured"
    assert all(0.0 <= c["recall_at_100"] <= 1.0 for c in forced["hnsw_curve"])
    assert 0.0 <= forced["recall_at_100"] <= 1.0
    if forced["index"] == "hnsw":
        assert forced["recall_at_100_tune"] >= 0.95
    assert set(forced["norm_concentration"]) == {
        "top_1pct",
        "top_5pct",
        "top_10pct",
        "top_20pct",
        "top_50pct",
    }


def test_run_and_memory_hold(tmp_path: Path) -> None:
    cfg = SyntheticConfig(
        n_universe=4000, n_fit=1000, n_users=500, n_clusters=8, factors=8, iterations=2, seed=2
    )
    res = run(
        [1000, 4000],
        cfg=cfg,
        n_queries=40,
        save_dir=tmp_path,
        min_time=0.01,
        single_queries=10,
        also_hnsw_small=False,
    )
    names = [r["name"] for r in res["rows"]]
    assert names[0] == "1K" and "4K" in names
    json.dumps(res)  # serializable
    d = next(r["saved_to"] for r in res["rows"] if r["name"] == "4K")
    out = subprocess.run(
        [sys.executable, "-m", "tools.memory", "hold", "--dir", d],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    assert mem["items"] == 4000 and mem["rss_loaded_kb"] > 0
