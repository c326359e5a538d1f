"""Sharded catalogs: two real shard rankers (0/2 and 1/2) of the session's model version,
merged by recgen/core/shard_merge.py, give the items and scores of the one unsharded ranker, for warm
and cold users, category filters, context, dismissals, live appends and deletes, and similar
items. Also: a shard's retrieval index of each exact kind equals exact search over its rows."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from recgen.config import WorkerConfig
from recgen.core.shard_merge import Candidate, ShardAnswer, merge
from recgen.repository import CatalogItem
from worker.context import JobContext
from worker.live_catalog import Change, LiveCatalog
from worker.metrics import Metrics
from worker.model import LoadedModel
from worker.ranking import RankJob, RankResult
from worker.retrieval import Retriever

N_SHARDS = 2


@pytest.fixture(scope="module")
def models(model_root: Path):
    """The unsharded model, then one per shard, all of the same version."""
    ms = [LoadedModel.load(model_root, None, WorkerConfig(threads=1), Metrics())]
    ms += [
        LoadedModel.load(model_root, None, WorkerConfig(threads=1, shard=(i, N_SHARDS)), Metrics())
        for i in range(N_SHARDS)
    ]
    yield ms
    for m in ms:
        m.close()


def answer(r: RankResult) -> ShardAnswer:
    keys = r.pool_keys if r.pool_keys is not None else np.zeros(r.rows.size, np.float32)
    near = r.near if r.near is not None else np.zeros(r.rows.size, np.float32)
    return ShardAnswer(
        [
            Candidate(int(a), float(s), float(k), float(e))
            for a, s, k, e in zip(r.rows, r.scores, keys, near, strict=True)
        ],
        r.pool,
        r.demotion,
    )


def merged(shards: list[LoadedModel], jobs: list[RankJob]) -> list[tuple[list[int], np.ndarray]]:
    per_shard = [m.ranker.rank(jobs) for m in shards]
    out = []
    for b, j in enumerate(jobs):
        results = [res[b] for res in per_shard]
        picked = merge([answer(r) for r in results], j.k)
        out.append(([int(results[s].rows[i]) for s, i, _ in picked], np.asarray([x for _, _, x in picked])))
    return out


def assert_same(models: list[LoadedModel], jobs: list[RankJob]) -> None:
    full, *shards = models
    expected = full.ranker.rank(jobs)
    got = merged(shards, jobs)
    for j, e, (rows, scores) in zip(jobs, expected, got, strict=True):
        assert rows == e.rows.tolist(), (j, rows, e.rows.tolist())
        np.testing.assert_allclose(scores, e.scores, rtol=1e-5, atol=1e-5)


def job(history: list[int], k: int = 10, exclude_rows: np.ndarray | None = None, **kw) -> RankJob:
    rows = np.asarray(history, np.int64)
    w = np.linspace(1.0, 0.5, rows.size).astype(np.float32)
    return RankJob(rows, w, np.zeros(0, np.int64) if exclude_rows is None else exclude_rows, k, **kw)


def histories(n_items: int, n: int = 20, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.choice(n_items, size=int(rng.integers(1, 30)), replace=False).tolist() for _ in range(n)]


def test_shards_own_disjoint_rows_covering_the_catalog(models) -> None:
    full, *shards = models
    owned = np.stack([m.ranker.owned for m in shards])
    assert (owned.sum(axis=0) == 1).all()
    assert sum(m.ranker.retriever.ntotal for m in shards) == full.ranker.retriever.ntotal
    assert shards[1].ranker.retriever.kind == full.ranker.retriever.kind


def test_warm_users_merge_to_the_single_index_answer(models) -> None:
    n = models[0].ranker.n_items
    jobs = [job(h, k=k) for h, k in zip(histories(n), [1, 5, 10, 20, 50, 100] * 4, strict=False)]
    assert_same(models, jobs)  # one batch, mixed k
    assert_same(models, [job(histories(n, 1, seed=3)[0], k=300)])  # a pool larger than RERANK_MIN


def test_cold_users_and_popularity_ties(models) -> None:
    pop = models[0].ranker.popularity
    assert len(np.unique(pop[models[0].ranker.pop_order[:300]])) < 300  # ties exist and must merge right
    assert_same(models, [job([], k=k) for k in (1, 10, 300)])


def test_category_filters(models) -> None:
    full = models[0]
    drama = full.allowed_by_categories(["Drama"], [])
    no_comedy = full.allowed_by_categories([], ["Comedy"])
    jobs = [job(h, k=15, allowed=drama) for h in histories(full.ranker.n_items, 6, seed=1)]
    jobs += [job([], k=15, allowed=no_comedy), job([3, 4], k=15, allowed=no_comedy)]
    assert_same(models, jobs)


def test_context_and_dismissals(models) -> None:
    n = models[0].ranker.n_items
    hs = histories(n, 8, seed=2)
    ctx = [JobContext(hour=h, weekday=d) for h, d in [(8, 1), (21, 5), (23, 6), (13, 3)]]
    jobs = [job(h, k=10, context=ctx[i % 4]) for i, h in enumerate(hs)]
    jobs += [job([], k=10, context=c) for c in ctx]
    first = models[0].ranker.rank([job(hs[0], k=10)])[0].rows
    dismissed = np.asarray(first[:2], np.int64)
    jobs += [
        job(hs[0], k=10, dismissed_rows=dismissed, exclude_rows=dismissed),
        job([], k=10, dismissed_rows=np.asarray([49, 180], np.int64)),
        job([], k=10, dismissed_rows=np.asarray([49], np.int64), context=ctx[1]),
    ]
    assert_same(models, jobs)
    # The dismissal changed the answer (so the merge's demotion was exercised).
    alone = models[0].ranker.rank([job(hs[0], k=10, exclude_rows=dismissed)])[0].rows.tolist()
    demoted = models[0].ranker.rank([jobs[-3]])[0].rows.tolist()
    assert alone != demoted or np.allclose(models[0].ranker.unit[dismissed] @ models[0].ranker.unit.T, 0)


def test_cold_context_reranking(models) -> None:
    """The session version learned no cold context weight; give it one on every ranker, so the
    shards re-rank the global popularity pool by hour as the single ranker does."""
    assert all(m.ranker.context is not None and m.ranker.context.hour_lift is not None for m in models)
    saved = dict(models[0].ranker.context.weights["cold"])
    try:
        for m in models:
            m.ranker.context.weights["cold"]["hour"] = 0.5
        ctx = [JobContext(hour=h, weekday=d) for h, d in [(8, 1), (21, 5), (2, 6)]]
        jobs = [job([], k=20, context=c) for c in ctx]
        jobs.append(job([], k=20, context=ctx[1], dismissed_rows=np.asarray([49, 99], np.int64)))
        plain = models[0].ranker.rank([job([], k=20)])[0].rows.tolist()
        assert any(r.rows.tolist() != plain for r in models[0].ranker.rank(jobs))  # context did re-rank
        assert_same(models, jobs)
    finally:
        for m in models:
            m.ranker.context.weights["cold"] = dict(saved)


def test_a_plain_score_merge_would_not_be_exact(models) -> None:
    """Why warm shards send their whole pool: context terms reorder the candidates one index
    retrieved, so the shards' top k merged by score alone differs from the one-index answer."""
    full, *shards = models
    n = full.ranker.n_items
    jobs = [job(h, k=10, context=JobContext(hour=21, weekday=5)) for h in histories(n, 20, seed=6)]
    expected = full.ranker.rank(jobs)
    per_shard = [m.ranker.rank(jobs) for m in shards]
    differs = 0
    for b, j in enumerate(jobs):
        top_k = [ShardAnswer(answer(res[b]).items[: j.k]) for res in per_shard]  # no pool, no keys
        picked = merge(top_k, j.k)
        rows = [top_k[s].items[i].row for s, i, _ in picked]
        differs += rows != expected[b].rows.tolist()
    assert differs > 0


def test_similar_items(models) -> None:
    full, *shards = models
    for row in (0, 49, 180, 1000):
        e_rows, e_sims = full.ranker.similar(row, 25)
        answers = []
        for m in shards:
            rows, sims = m.ranker.similar(row, 25)
            answers.append(
                ShardAnswer([Candidate(int(r), float(s)) for r, s in zip(rows, sims, strict=True)])
            )
        picked = merge(answers, 25)
        rows = [answers[s].items[i].row for s, i, _ in picked]
        assert rows == e_rows.tolist()
        np.testing.assert_allclose([x for _, _, x in picked], e_sims, rtol=1e-6)


def test_live_appends_and_deletes_keep_the_merge_exact(models) -> None:
    full = models[0]
    n = full.ranker.n_items
    deleted = full.ranker.rank([job([], k=6)])[0].rows[:3]
    changes = [
        Change(1, False, CatalogItem("shard-a", "Shard A", "", ("Drama",))),
        Change(2, False, CatalogItem("shard-b", "Shard B", "", ("Comedy",))),
        Change(3, False, CatalogItem("shard-c", "Shard C", "", ("Horror",))),
        *[Change(4 + i, True, CatalogItem(full.catalog[int(r)].item_id, "")) for i, r in enumerate(deleted)],
    ]
    for m in models:  # every worker applies the same log in the same order
        LiveCatalog().apply(m, changes)
        assert m.item_index["shard-c"] == n + 2
    shards = models[1:]
    assert [bool(m.ranker.owned[n + 1]) for m in shards] == [(n + 1) % 2 == 0, (n + 1) % 2 == 1]
    assert sum(m.ranker.retriever.ntotal for m in shards) == n + 3
    horror = full.allowed_by_categories(["Horror"], [])
    assert horror is not None and horror[n + 2]
    # An appended item aligned with a user is found by that shard's index and merged in first.
    hist = [0, 1, 2, 3]
    user = full.ranker.foldin.user_vectors([(np.asarray(hist), np.full(4, 1 + full.ranker.alpha))])[0]
    longest = float(np.linalg.norm(full.ranker.factors, axis=1).max())
    vec = (user / np.linalg.norm(user) * 2 * longest)[None, :].astype(np.float32)
    for m in models:
        m.ranker.append_items(vec)
        m.catalog.append(CatalogItem("aligned", "Aligned"))
    assert full.ranker.rank([job(hist, k=5)])[0].rows[0] == n + 3
    jobs = [job(h, k=20) for h in histories(n, 10, seed=4)] + [job(hist, k=5), job([], k=20)]
    horror = np.append(horror, False)  # "aligned" has no category
    jobs.append(job([5, 6], k=20, allowed=horror))
    assert_same(models, jobs)
    got = merged(models[1:], [job([], k=50)])[0][0]
    assert not set(deleted.tolist()) & set(got)


@pytest.mark.parametrize("kind", ["flat", "norm_bounded"])
def test_shard_index_is_exact_over_its_rows(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(7)
    xb = (rng.standard_normal((3000, 16)) * rng.lognormal(0, 0.5, (3000, 1))).astype(np.float32)
    xq = rng.standard_normal((40, 16)).astype(np.float32)
    flat = faiss.IndexFlatIP(16)
    flat.add(xb)
    faiss.write_index(flat, str(tmp_path / "items.faiss"))
    params = {"kind": kind, "head_items": 300}
    for index in range(3):
        r = Retriever(tmp_path / "items.faiss", params, threads=1)
        r.keep_shard(xb, index, 3)
        mine = np.flatnonzero(np.arange(3000) % 3 == index)
        _, got = r.search(xq, 50)
        truth = mine[np.argsort(-(xq @ xb[mine].T), axis=1, kind="stable")[:, :50]]
        assert (got == truth).mean() > 0.999  # exact up to float ties
        extra = rng.standard_normal((5, 16)).astype(np.float32) * 10
        r.add(extra)  # rows 3000..3004: only this shard's join its index
        assert r.ntotal == mine.size + int((np.arange(3000, 3005) % 3 == index).sum())
