"""The batch-wide ranking steps of worker/ranking.py against the per-request loops they
replaced: top-k by argpartition equals a stable argsort (ties included), and the CSR-mask
candidate pools equal filtering each request on its own, by the index or by one matrix product."""

from __future__ import annotations

import numpy as np

from worker.ranking import RERANK_MIN, top_k


def test_top_k_equals_a_stable_argsort_with_ties_and_missing_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(7, 600)).astype(np.float64)  # many ties; past SORT_MAX columns
    scores[2, 10:] = -np.inf  # a request with few candidates
    for k in (1, 5, 10, 60, 600, 800):
        want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        got = top_k(scores, k)
        assert np.array_equal(np.take_along_axis(scores, got, 1), np.take_along_axis(scores, want, 1))
        finite = np.isfinite(np.take_along_axis(scores, want, 1))
        assert np.array_equal(got[finite], want[finite])


def test_pools_equal_filtering_each_request_alone(model_root) -> None:  # type: ignore[no-untyped-def]
    from recgen.config import WorkerConfig
    from worker.metrics import Metrics
    from worker.model import LoadedModel
    from worker.ranking import RankJob

    m = LoadedModel.load(model_root, None, WorkerConfig(threads=1), Metrics())
    try:
        r = m.ranker
        rng = np.random.default_rng(1)
        jobs = [
            RankJob(
                rng.choice(r.n_items, 8, replace=False).astype(np.int64),
                np.ones(8, np.float32),
                rng.choice(r.n_items, e, replace=False).astype(np.int64),
                k,
            )
            for e, k in ((0, 10), (30, 5), (3, 70), (200, 10))
        ]
        r.set_deleted(np.asarray([int(rng.integers(r.n_items))]), True)
        users = r.foldin.user_vectors([(j.history_rows, 1.0 + r.alpha * j.history_weights) for j in jobs])
        consumed = [j.consumed for j in jobs]
        ip, cand = r.retriever.search(users, 400)
        picked, keys = r._pools(jobs, users, consumed, cand, ip)
        for b, j in enumerate(jobs):
            banned = np.concatenate([r.deleted_rows, j.exclude_rows, consumed[b]])
            ok = (cand[b] >= 0) & ~np.isin(cand[b], banned)
            want = cand[b][ok][: max(RERANK_MIN, j.k)]
            assert np.array_equal(picked[b, : want.size], want)
            assert (picked[b, want.size :] == -1).all()
            assert np.allclose(keys[b, : want.size], ip[b][ok][: want.size])
        # Exact retrieval by one matrix product gives the index's pools (both exact).
        assert r._dense(len(jobs))
        dense, dense_keys = r._dense_pools(jobs, users, consumed)
        assert np.array_equal(dense, picked)
        assert np.allclose(dense_keys[dense >= 0], keys[picked >= 0], rtol=1e-5)
    finally:
        m.close()
