"""The index build_index chooses, as the worker loads it, against exact inner-product search.

The catalog is skewed the way MF factors are: norms follow popularity, and user vectors (sums of
the items a user touched, drawn by popularity) point at the high-norm head. A few queries point
elsewhere, so the norm-bounded index cannot certify them and must fall back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from export.index import build_index, save_index
from recgen.core.index_types import NormBounded, mips_items
from worker.retrieval import Retriever


def skewed_catalog(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items (n, d), popularity (n,), cluster (n,)): 40 clusters of directions sharing a common
    component (MF's "everyone likes it" direction), norm ∝ popularity^0.7."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(d)
    centers = rng.standard_normal((40, d)) / np.sqrt(d) + 0.5 * common / np.linalg.norm(common)
    cluster = rng.integers(0, 40, n)
    x = centers[cluster] + 0.5 / np.sqrt(d) * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pop = 1.0 / (rng.permutation(n) + 10.0)  # Zipf–Mandelbrot over a random order
    items = x * (pop / pop.max())[:, None] ** 0.7
    return items.astype(np.float32), pop, cluster


def user_vectors(items: np.ndarray, pop: np.ndarray, n: int, odd: int, seed: int) -> np.ndarray:
    """n users summing 5–30 items drawn by popularity, then `odd` users in random directions."""
    rng = np.random.default_rng(seed)
    p = pop / pop.sum()
    users = [items[rng.choice(len(items), size=int(rng.integers(5, 30)), p=p)].sum(axis=0) for _ in range(n)]
    strange = rng.standard_normal((odd, items.shape[1])) * 2.0
    return np.vstack([np.array(users), strange]).astype(np.float32)


def exact(items: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    flat = faiss.IndexFlatIP(items.shape[1])
    flat.add(np.ascontiguousarray(items))
    return flat.search(q, k)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return sum(len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True)) / truth.size


@pytest.fixture(scope="module")
def chosen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    items, pop, _ = skewed_catalog(30_000, 32, seed=1)
    tune = user_vectors(items, pop, 400, 10, seed=2)
    faiss.omp_set_num_threads(1)
    index, choice = build_index(items, tune, exact_max_items=1000, hnsw_m=None)
    path = tmp_path_factory.mktemp("nb") / "items.faiss"
    save_index(index, str(path))
    return {"items": items, "pop": pop, "choice": choice, "path": path}


def test_build_index_chooses_norm_bounded_on_skewed_catalog(chosen: dict[str, Any]) -> None:
    choice = chosen["choice"]
    assert choice.kind == "norm_bounded", choice
    assert choice.recall_at_100 == 1.0
    assert choice.queries_per_s > choice.exact_queries_per_s > 0
    p = choice.params
    assert p["head_items"] == int(30_000 * p["head_share"]) and 0.0 <= p["fallback_share"] < 1.0
    shares = [row["head_share"] for row in p["measured"]["norm_bounded"]]
    assert p["head_share"] in shares and len(shares) >= 4  # 0.5 % of 30K is 150 items: ≥ k
    assert all(row["recall_at_100"] == 1.0 for row in p["measured"]["norm_bounded"])


def test_loaded_norm_bounded_equals_exact_search_with_fallback(chosen: dict[str, Any]) -> None:
    items, choice = chosen["items"], chosen["choice"]
    r = Retriever(chosen["path"], {"kind": choice.kind, **choice.params}, threads=1)
    assert r.kind == "norm_bounded" and r.ntotal == len(items)
    q = user_vectors(items, chosen["pop"], 300, 20, seed=3)  # unseen by the tuning
    for k in (100, 10):
        scores, rows = r.search(q, k)
        want_s, want_r = exact(items, q, k)
        np.testing.assert_array_equal(rows, want_r)
        np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-6)
    nb = r._search
    assert isinstance(nb, NormBounded)
    # Both paths ran: most queries certified by the head, the odd ones searched in full.
    assert 0 < nb.fallback_queries < nb.queries / 2
    # Batch of one (the same answers one query at a time, fallback or not).
    for i in (0, len(q) - 1):
        _, one = r.search(q[i : i + 1], 100)
        np.testing.assert_array_equal(one[0], exact(items, q[i : i + 1], 100)[1][0])


def test_norm_bounded_fallback_when_head_is_smaller_than_k() -> None:
    items, pop, _ = skewed_catalog(2000, 16, seed=4)
    flat = faiss.IndexFlatIP(16)
    flat.add(items)
    nb = NormBounded(flat, 50)
    q = user_vectors(items, pop, 30, 5, seed=5)
    _, rows = nb.search(q, 100)
    np.testing.assert_array_equal(rows, exact(items, q, 100)[1])
    assert nb.fallback_queries == len(q)


@pytest.mark.parametrize("kind", ["flat", "norm_bounded", "hnsw"])
def test_add_keeps_search_exact(kind: str, tmp_path: Path) -> None:
    items, pop, _ = skewed_catalog(3000, 16, seed=6)
    q = user_vectors(items, pop, 60, 5, seed=7)
    params: dict[str, Any]
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(16)
        index.add(items)
        params = {"kind": "flat"}
    elif kind == "norm_bounded":
        index = faiss.IndexFlatIP(16)
        index.add(items)
        params = {"kind": "norm_bounded", "head_items": 300}
    else:
        index = faiss.IndexHNSWFlat(17, 16, faiss.METRIC_L2)
        index.add(mips_items(items))
        params = {"kind": "hnsw", "M": 16, "efSearch": 512, "mips_to_l2": True}
    faiss.write_index(index, str(tmp_path / "items.faiss"))
    r = Retriever(tmp_path / "items.faiss", params, threads=1)
    before = recall(r.search(q, 100)[1], exact(items, q, 100)[1])
    rng = np.random.default_rng(8)
    norms = np.linalg.norm(items, axis=1)
    # New items: some longer than every old item (new bestsellers: beyond the HNSW lift, and the
    # norm-bounded tail bound must still hold), some ordinary, some tiny.
    scale = np.concatenate([np.full(20, 1.5 * norms.max()), np.full(20, np.median(norms)), np.full(20, 1e-3)])
    new = rng.standard_normal((60, 16))
    new = (new / np.linalg.norm(new, axis=1, keepdims=True) * scale[:, None]).astype(np.float32)
    r.add(new[:30])
    r.add(new[30:])
    extended = np.vstack([items, new])
    assert r.ntotal == len(extended)
    scores, rows = r.search(q, 100)
    want_s, want_r = exact(extended, q, 100)
    assert (rows >= len(items)).any(), "the appended long items reach the answers"
    if kind == "hnsw":
        # Approximate (the graph misses low-norm answers on skewed data), but no worse for the
        # additions, and the items too long for the lift, kept in the exact side index, are never missed.
        assert recall(rows, want_r) >= before - 0.02
        long_rows = np.arange(len(items), len(items) + 20)
        for got, want in zip(rows, want_r, strict=True):
            assert set(np.intersect1d(want, long_rows)) <= set(got)
        np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", q, extended[rows]), rtol=1e-4, atol=1e-4)
    else:
        np.testing.assert_array_equal(rows, want_r)
        np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-6)


def test_add_rejects_bad_vectors(tmp_path: Path) -> None:
    index = faiss.IndexFlatIP(4)
    index.add(np.eye(4, dtype=np.float32))
    faiss.write_index(index, str(tmp_path / "items.faiss"))
    r = Retriever(tmp_path / "items.faiss", {"kind": "flat"}, threads=1)
    with pytest.raises(ValueError, match=r"expected \(n, 4\)"):
        r.add(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="finite"):
        r.add(np.full((1, 4), np.nan, np.float32))
    r.add(np.zeros((0, 4), np.float32))
    assert r.ntotal == 4


@pytest.mark.parametrize(
    "params",
    [
        {"kind": "flat"},
        {"kind": "flat", "fallback_from": {"kind": "hnsw", "params": {"M": 32, "efSearch": 2048}}},
        {},
    ],
)
def test_versions_exported_before_norm_bounded_still_load(params: dict[str, Any], tmp_path: Path) -> None:
    """Params as export/pipeline.py wrote them before this index kind existed."""
    items, pop, _ = skewed_catalog(2000, 16, seed=9)
    index = faiss.IndexFlatIP(16)
    index.add(items)
    faiss.write_index(index, str(tmp_path / "items.faiss"))
    r = Retriever(tmp_path / "items.faiss", params, threads=1)
    q = user_vectors(items, pop, 20, 2, seed=10)
    _, rows = r.search(q, 50)
    np.testing.assert_array_equal(rows, exact(items, q, 50)[1])


def test_old_hnsw_version_loads_and_answers_in_row_ids(tmp_path: Path) -> None:
    items, pop, _ = skewed_catalog(2000, 16, seed=11)
    index = faiss.IndexHNSWFlat(17, 16, faiss.METRIC_L2)
    index.add(mips_items(items))
    faiss.write_index(index, str(tmp_path / "items.faiss"))
    r = Retriever(tmp_path / "items.faiss", {"kind": "hnsw", "M": 16, "efSearch": 256, "mips_to_l2": True}, 1)
    q = user_vectors(items, pop, 20, 0, seed=12)
    _, rows = r.search(q, 10)
    assert recall(rows, exact(items, q, 10)[1]) >= 0.9
