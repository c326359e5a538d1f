"""MF math, the ONNX scorer and the FAISS index against trusted references."""

from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort
import pytest

from export.index import build_index, recall_at
from export.mf import ALSParams, train_als
from export.scorer_onnx import export_scorer
from recgen.core.foldin import FoldIn

# The seed's worked example (section 4.5): user C and item 2.
U_C = np.array([0.2, -0.1, 0.3, 0.4], dtype=np.float32)
V_2 = np.array([0.3, 0.2, 0.1, -0.3], dtype=np.float32)


def scorer_session(tmp_path: Path, dim: int) -> ort.InferenceSession:
    export_scorer(dim, tmp_path / "scorer.onnx")
    return ort.InferenceSession(str(tmp_path / "scorer.onnx"), providers=["CPUExecutionProvider"])


def test_seed_worked_example_through_onnx(tmp_path: Path) -> None:
    # The seed prints -0.03, but its own terms 0.06 - 0.02 + 0.03 - 0.12 sum to
    # -0.05: u_C · v_2 is -0.05, and that is what the exported scorer must give.
    sess = scorer_session(tmp_path, 4)
    (scores,) = sess.run(None, {"user_vectors": U_C[None], "item_vectors": V_2[None, None]})
    assert scores.shape == (1, 1)
    assert scores[0, 0] == pytest.approx(-0.05, abs=1e-6)


def test_scorer_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    u = rng.standard_normal((7, 16)).astype(np.float32)
    v = rng.standard_normal((7, 30, 16)).astype(np.float32)
    (scores,) = scorer_session(tmp_path, 16).run(None, {"user_vectors": u, "item_vectors": v})
    np.testing.assert_allclose(scores, np.einsum("bd,bcd->bc", u, v), rtol=1e-5, atol=1e-5)


def test_foldin_equals_independent_solve() -> None:
    rng = np.random.default_rng(1)
    y = rng.standard_normal((50, 8)).astype(np.float32)
    reg = 0.3
    hist = [
        (np.array([3, 7, 9]), np.array([2.0, 3.0, 1.5], np.float32)),
        (np.array([1]), np.array([4.0], np.float32)),
        (np.array([], dtype=np.int64), np.array([], np.float32)),
    ]
    got = FoldIn(y, reg).user_vectors(hist)
    for (rows, conf), x in zip(hist, got, strict=True):
        # Full-matrix form of the implicit ALS objective for one user.
        c = np.ones(50)
        p = np.zeros(50)
        c[rows] = conf
        p[rows] = 1.0
        yd = y.astype(np.float64)
        want = np.linalg.solve(yd.T @ (c[:, None] * yd) + reg * np.eye(8), yd.T @ (c * p))
        np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-5)


def test_als_recovers_clusters() -> None:
    # Two taste clusters: users of one cluster interact with its items only.
    rng = np.random.default_rng(2)
    users, items = [], []
    for u in range(40):
        cluster = u % 2
        for i in rng.choice(20, size=8, replace=False):
            users.append(u)
            items.append(i + 20 * cluster)
    m = train_als(
        np.array(users), np.array(items), 40, 40, ALSParams(factors=4, reg=0.1, alpha=5.0, iterations=10)
    )
    scores = m.user_factors @ m.item_factors.T
    own = np.array([scores[u, 20 * (u % 2) : 20 * (u % 2) + 20].mean() for u in range(40)])
    other = np.array([scores[u, 20 * (1 - u % 2) : 20 * (1 - u % 2) + 20].mean() for u in range(40)])
    assert (own > other + 0.2).all()


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((32, d))
    x = centers[rng.integers(0, 32, n)] + 0.4 * rng.standard_normal((n, d))
    return x.astype(np.float32)


def test_flat_index_equals_brute_force() -> None:
    items, users = clustered(3000, 16, 3), clustered(50, 16, 4)
    index, choice = build_index(items, users)
    assert choice.kind == "flat"
    _, ids = index.search(users, 10)
    brute = np.argsort(-(users @ items.T), axis=1, kind="stable")[:, :10]
    assert recall_at(ids, brute) > 0.999  # ties may swap order, never membership


def test_large_catalog_gets_the_fastest_candidate_that_meets_recall_target() -> None:
    items, users = clustered(20000, 16, 5), clustered(200, 16, 6)
    index, choice = build_index(items, users, recall_target=0.95, exact_max_items=1000)
    m = choice.params["measured"]
    qualified = [m["exact_queries_per_s"]] + [r["queries_per_s"] for r in m["norm_bounded"]]
    if m["hnsw"]["recall_at_100"] >= 0.95:
        qualified.append(m["hnsw"]["queries_per_s"])
    assert choice.queries_per_s == pytest.approx(max(qualified), rel=1e-3)
    # HNSW stopped raising efSearch only at the target, at the end, or once slower than the others.
    h = m["hnsw"]
    assert h["recall_at_100"] >= 0.95 or h["efSearch"] == 2048 or h["queries_per_s"] < max(qualified)
    exact = faiss.IndexFlatIP(16)
    exact.add(items)
    _, truth = exact.search(users, 100)
    from recgen.core.index_types import mips_queries

    _, got = index.search(mips_queries(users) if choice.kind == "hnsw" else users, 100)
    assert recall_at(got, truth) >= 0.95 and choice.recall_at_100 >= 0.95


def test_hnsw_candidate_meets_recall_target() -> None:
    from export.index import _hnsw_candidate
    from recgen.core.index_types import mips_queries

    items, users = clustered(20000, 16, 5), clustered(200, 16, 6)
    exact = faiss.IndexFlatIP(16)
    exact.add(items)
    _, truth = exact.search(users, 100)
    index, row = _hnsw_candidate(items, users, truth, 100, 32, 0.95, beat_qps=0.0, batch=64)
    assert row["recall_at_100"] >= 0.95 and row["mips_to_l2"]
    _, got = index.search(mips_queries(users), 100)
    assert recall_at(got, truth) >= 0.95


def reference_als(user, item, n_users, n_items, p: ALSParams) -> tuple[np.ndarray, np.ndarray]:
    """iALS with every row solved alone by the served fold-in (recgen/core/foldin.py), no batching."""
    key, count = np.unique(user.astype(np.int64) * n_items + item, return_counts=True)
    u, i, conf = key // n_items, key % n_items, (1.0 + p.alpha * count).astype(np.float32)
    rng = np.random.default_rng(p.seed)
    x = (rng.standard_normal((n_users, p.factors)) / np.sqrt(p.factors)).astype(np.float32)
    y = (rng.standard_normal((n_items, p.factors)) / np.sqrt(p.factors)).astype(np.float32)

    def half_step(fixed: np.ndarray, owner: np.ndarray, other: np.ndarray, n_owner: int) -> np.ndarray:
        fold = FoldIn(fixed, p.reg)
        rows = [(other[owner == r], conf[owner == r]) for r in range(n_owner)]
        return np.stack([fold.user_vectors([row])[0] for row in rows])  # one row at a time

    for _ in range(p.iterations):
        x = half_step(y, u, i, n_users)
        y = half_step(x, i, u, n_items)
    return x, y


def long_tail(n_users: int, n_items: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pu = rng.lognormal(0, 1.2, n_users)
    pi = np.arange(1, n_items + 1, dtype=np.float64) ** -1.0
    return rng.choice(n_users, n, p=pu / pu.sum()), rng.choice(n_items, n, p=pi / pi.sum())


def test_als_solves_what_the_served_fold_in_solves() -> None:
    # Rows from 1 to hundreds of entries: many length classes and batches, one row alone.
    user, item = long_tail(150, 120, 6000, 7)
    p = ALSParams(factors=6, reg=0.2, alpha=3.0, iterations=3, seed=5)
    m = train_als(user, item, 150, 120, p)
    x, y = reference_als(user, item, 150, 120, p)
    np.testing.assert_allclose(m.user_factors, x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m.item_factors, y, rtol=1e-4, atol=1e-5)
    again = train_als(user, item, 150, 120, p)
    assert np.array_equal(again.item_factors, m.item_factors)  # deterministic for a seed


def test_als_batches_pad_within_a_length_class() -> None:
    from export.mf import batch_row_bytes, plan_batches

    lengths = np.concatenate([np.zeros(5, int), np.random.default_rng(8).zipf(1.5, 5000).clip(max=50_000)])
    batches = plan_batches(lengths, 64, 8 << 20)
    solved = np.concatenate(batches)
    assert sorted(solved) == sorted(np.flatnonzero(lengths > 0))  # every non-empty row once
    for b in batches:
        longest, shortest = lengths[b].max(), lengths[b].min()
        assert longest <= 2 * shortest  # one length class: (2^(k-1), 2^k]
        assert len(b) == 1 or len(b) * batch_row_bytes(int(longest), 64) <= 8 << 20


def test_als_refuses_a_budget_it_cannot_fit() -> None:
    from export.budget import BudgetError, rss

    user, item = long_tail(50, 40, 500, 9)
    with pytest.raises(BudgetError, match="raise --max-memory or lower --factors"):
        train_als(user, item, 50, 40, ALSParams(factors=8, iterations=1), max_memory=rss() + 10)
