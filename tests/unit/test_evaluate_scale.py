"""Chunked evaluation, EASE's guard and sparse Gram, and the memory budget, against dense references."""

import time

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_info

from export import budget, ease
from export.data import CleaningReport, Dataset
from export.evaluate import (
    K,
    evaluate_mf,
    evaluate_popularity,
    leave_last_out,
    sample_split,
    top_unseen,
    train_matrix,
    user_histories,
)
from recgen.core.foldin import FoldIn
from recgen.repository import CatalogItem

METRICS = ("hit_rate@10", "recall@10", "ndcg@10", "coverage@10", "users")


def synthetic(n_users: int, n_items: int, n_rows: int, seed: int = 0) -> Dataset:
    """A long-tail log: lognormal user activity, Zipf-like item popularity, repeats allowed."""
    rng = np.random.default_rng(seed)
    pu = rng.lognormal(0.0, 1.0, n_users)
    pi = np.arange(1, n_items + 1, dtype=np.float64) ** -0.8
    user = rng.choice(n_users, n_rows, p=pu / pu.sum()).astype(np.int32)
    item = rng.choice(n_items, n_rows, p=pi / pi.sum()).astype(np.int32)
    return Dataset(
        items=[CatalogItem(f"i{i}", f"item {i}") for i in range(n_items)],
        users=[f"u{u}" for u in range(n_users)],
        user=user,
        item=item,
        rating=np.ones(n_rows, np.float32),
        timestamp=np.sort(rng.random(n_rows)),
        source="synthetic",
        fingerprint="test",
        report=CleaningReport(),
    )


def dense_reference(ds: Dataset, split, scores: np.ndarray) -> dict[str, float]:
    """The evaluation as it was: a dense users × items seen mask and one argpartition."""
    seen = np.zeros((ds.n_users, ds.n_items), dtype=bool)
    seen[ds.user[split.train_rows], ds.item[split.train_rows]] = True
    s = np.where(seen[split.test_user], -np.inf, scores)
    top = np.argpartition(-s, K, axis=1)[:, :K]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable"), 1)
    hit = (top == split.test_item[:, None]).any(axis=1)
    ndcg = np.where(hit, 1.0 / np.log2(np.argmax(top == split.test_item[:, None], axis=1) + 2.0), 0.0)
    return {
        "hit_rate@10": float(hit.mean()),
        "recall@10": float(hit.mean()),
        "ndcg@10": float(ndcg.mean()),
        "coverage@10": float(np.unique(top).size / ds.n_items),
        "users": len(split.test_item),
    }


@pytest.fixture(scope="module")
def data():
    ds = synthetic(1300, 400, 30_000)
    split = leave_last_out(ds)
    factors = np.random.default_rng(1).standard_normal((ds.n_items, 8)).astype(np.float32)
    return ds, split, factors


@pytest.mark.parametrize("room", [None, 400 * 12 * 40, 400 * 12 * 3])  # one chunk; 20 users; 1 user
def test_chunked_mf_equals_dense_reference(data, room) -> None:
    ds, split, factors = data
    max_memory = None if room is None else budget.rss() + room
    got = evaluate_mf(ds, split, factors, 0.1, 2.0, max_memory=max_memory)
    hist = user_histories(ds, split.train_rows, 2.0)
    fold = FoldIn(factors, 0.1)
    scores = fold.user_vectors([hist[u] for u in split.test_user]) @ fold.factors.T
    want = dense_reference(ds, split, scores)
    for k in METRICS:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
    assert got["ndcg@10_se"] > 0 and got["hit_rate@10_se"] > 0


def test_popularity_equals_dense_reference(data) -> None:
    ds, split, _ = data
    pop = np.bincount(ds.item[split.train_rows], minlength=ds.n_items).astype(np.float32)
    want = dense_reference(ds, split, np.broadcast_to(pop, (len(split.test_user), ds.n_items)))
    got = evaluate_popularity(ds, split)
    assert {k: got[k] for k in METRICS} == want


def test_histories_are_what_fold_in_uses(data) -> None:
    ds, split, factors = data
    full = user_histories(ds, split.train_rows, 2.0)

    def last_three(users: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(full[u][0][-3:], np.full(min(3, len(full[u][0])), 5.0, np.float32)) for u in users]

    assert evaluate_mf(ds, split, factors, 0.1, 2.0, histories=lambda users: [full[u] for u in users]) == (
        evaluate_mf(ds, split, factors, 0.1, 2.0)
    )
    got = evaluate_mf(ds, split, factors, 0.1, 2.0, histories=last_three)
    fold = FoldIn(factors, 0.1)
    scores = fold.user_vectors(last_three(split.test_user)) @ fold.factors.T
    want = dense_reference(ds, split, scores)  # seen items: still all training items
    assert {k: got[k] for k in METRICS} == pytest.approx(want)


def test_top_unseen_never_returns_training_items(data) -> None:
    ds, split, _ = data
    seen = train_matrix(ds, split.train_rows)
    users = split.test_user[:200]
    scores = np.random.default_rng(3).random((len(users), ds.n_items)).astype(np.float32)
    top = top_unseen(scores, seen, users)
    for row, u in zip(top, users, strict=True):
        assert not set(row) & set(seen.items[seen.row(int(u))])
        assert list(row) == sorted(row, key=lambda i: -scores[list(users).index(u), i])


def test_tuning_sample_is_fixed_and_bounded(data) -> None:
    ds, split, factors = data
    a, b = sample_split(split, 500, seed=7), sample_split(split, 500, seed=7)
    assert len(a.test_user) == 500 and a.sampled_from == len(split.test_user)
    assert np.array_equal(a.test_user, b.test_user) and np.all(np.diff(a.test_user) > 0)
    assert sample_split(split, 10**6) is split
    res = evaluate_mf(ds, a, factors, 0.1, 2.0)
    assert res["users"] == 500 and res["sampled_from"] == len(split.test_user)


# ------------------------------------------------------------------------------------------ EASE


def test_ease_weights_equal_dense_inverse(data) -> None:
    ds, split, _ = data
    x = ease.design_matrix(train_matrix(ds, split.train_rows), ds.n_items)
    g = ease.gram(x, 100.0)
    xd = x.toarray()
    np.testing.assert_array_equal(g, xd.T @ xd + 100.0 * np.eye(ds.n_items))
    p = np.linalg.inv(g)
    want = -p / np.diag(p)
    np.fill_diagonal(want, 0.0)
    np.testing.assert_allclose(ease.weights_in_place(g.copy()), want, atol=1e-12)


def test_wide_gram_is_sparse_and_single_threaded(monkeypatch) -> None:
    # The export crashed here: dense `x.T @ x` on a multi-threaded OpenBLAS from ~16,000 columns.
    # The Gram's work must be sparse products under a one-thread BLAS cap, block by block.
    n_users, n_items = 3000, 16_384
    rng = np.random.default_rng(4)
    rows = np.repeat(np.arange(n_users), 6)
    x = sp.csr_matrix((np.ones(rows.size), (rows, rng.integers(0, n_items, rows.size))), (n_users, n_items))
    x.data[:] = 1.0  # duplicates summed: back to 0/1
    products = []
    real = sp.csr_matrix.__matmul__

    def spy(a, b):
        assert sp.issparse(a) and sp.issparse(b), "a dense operand reached the Gram product"
        products.append([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"])
        return real(a, b)

    monkeypatch.setattr(sp.csr_matrix, "__matmul__", spy)
    t = time.perf_counter()
    blocks = list(ease.cooccurrence_blocks(x, block_bytes=64 << 20))
    assert time.perf_counter() - t < 10
    assert len(blocks) > 1 and len(products) == len(blocks)
    assert all(n == 1 for threads in products for n in threads)
    # Against the co-occurrence counts themselves: Σ_u n_u² in all, and one block exactly.
    assert sum(b.data.sum() for _, b in blocks) == float((np.diff(x.indptr) ** 2).sum())
    j0, b = blocks[1]
    want = np.zeros(b.shape)
    for u in range(n_users):
        items = x.indices[x.indptr[u] : x.indptr[u + 1]]
        inside = items[(items >= j0) & (items < j0 + b.shape[1])] - j0
        want[np.ix_(items, inside)] += 1.0
    np.testing.assert_array_equal(b.toarray(), want)


def test_gram_is_written_from_the_sparse_blocks(data, monkeypatch) -> None:
    ds, split, _ = data
    x = ease.design_matrix(train_matrix(ds, split.train_rows), ds.n_items)
    seen = []
    real = ease.cooccurrence_blocks
    monkeypatch.setattr(ease, "cooccurrence_blocks", lambda *a: (seen.append(1), real(*a))[1])
    g = ease.gram(x, 100.0, block_bytes=400 * 16 * 50)
    assert seen
    xd = x.toarray()
    np.testing.assert_array_equal(g, xd.T @ xd + 100.0 * np.eye(ds.n_items))


def test_ease_over_budget_is_refused_before_any_work(data) -> None:
    ds, split, _ = data
    x = ease.design_matrix(train_matrix(ds, split.train_rows), ds.n_items)
    plan = ease.plan_ease(x, split.test_user, budget.rss() + 1000, flops_per_s=1e10)
    assert plan.reason and "--max-memory" in plan.reason
    plan = ease.plan_ease(x, split.test_user, None, max_seconds=1e-3, flops_per_s=1e10)
    assert plan.reason and "limit" in plan.reason
    with pytest.raises(budget.BudgetError, match="--max-memory"):
        ease.evaluate_ease(ds, split, max_memory=budget.rss() + 1000)


def test_ease_metrics_equal_dense_reference(data) -> None:
    ds, split, _ = data
    xd = ease.design_matrix(train_matrix(ds, split.train_rows), ds.n_items).toarray()
    p = np.linalg.inv(xd.T @ xd + 100.0 * np.eye(ds.n_items))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    want = dense_reference(ds, split, xd[split.test_user] @ b)
    got = ease.evaluate_ease(ds, split)
    assert {k: got[k] for k in METRICS} == pytest.approx(want)


# ---------------------------------------------------------------------------------------- budget


@pytest.mark.parametrize(
    ("text", "n"),
    [("8G", 8 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("2000", 2000), ("64kb", 64 << 10)],
)
def test_parse_bytes(text: str, n: int) -> None:
    assert budget.parse_bytes(text) == n


@pytest.mark.parametrize("text", ["", "8X", "-1G", "0", "G"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        budget.parse_bytes(text)


def test_default_budget_is_a_share_of_the_machine() -> None:
    assert 0 < budget.default_max_memory() <= budget.machine_memory()


def test_stage_that_cannot_fit_says_what_to_change(data) -> None:
    ds, split, factors = data
    with pytest.raises(budget.BudgetError, match="raise --max-memory"):
        evaluate_mf(ds, split, factors, 0.1, 2.0, max_memory=budget.rss() + 100)


# -------------------------------------------------------------------------------------- pipeline


def test_tuning_ranks_a_sample_and_reports_its_noise(monkeypatch) -> None:
    import export.model_selection as model_selection

    ds = synthetic(500, 150, 8000)
    monkeypatch.setattr(model_selection, "sample_split", lambda split, seed: sample_split(split, 300, seed))
    opts = model_selection.ExportConfig(iterations=2, progress=False)
    params, trials = model_selection.choose_params(ds, opts)
    assert len(trials) == len(model_selection.TUNING_GRID)
    for t in trials:
        v = t["validation"]
        assert v["users"] == 300 and v["sampled_from"] > 300 and v["ndcg@10_se"] > 0


def test_ease_that_does_not_fit_is_skipped_with_its_reason(data) -> None:
    import export.model_selection as model_selection
    from export.mf import ALSParams

    ds, _, _ = data
    opts = model_selection.ExportConfig(iterations=2, progress=False, ease_max_seconds=1e-6)
    out = model_selection.evaluate_all(ds, ALSParams(factors=4, iterations=2), opts)
    assert "ease" not in out and "limit" in out["ease_skipped"]
    assert out["mf"]["users"] == out["popularity"]["users"] > 0
