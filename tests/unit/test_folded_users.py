"""The worker's folded-user cache (worker/folded_users.py) on a real loaded version: a repeat
request reuses the user's entry and vector and gets exactly the answer a fresh fold-in gives;
a new event, a forget or a new seen id is a new entry; adding an item clears it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from recgen.config import WorkerConfig
from recgen.repository import CatalogItem
from worker.context import JobContext
from worker.folded_users import FoldedUser, FoldedUsers
from worker.live_catalog import Change, LiveCatalog
from worker.metrics import Metrics
from worker.model import LoadedModel
from worker.rank_rows import build_job
from worker.ranking import RankJob


def test_lru_keeps_users_with_history_only_and_evicts_the_oldest() -> None:
    cache = FoldedUsers(capacity=2)

    def user(n: int) -> FoldedUser:
        return FoldedUser(np.arange(n, dtype=np.int64), np.ones(n, np.float32), np.zeros(0, np.int64))

    a = cache.get("a", lambda: user(3))
    assert cache.get("a", lambda: user(5)) is a  # kept: the builder is not called again
    assert cache.get("cold", lambda: user(0)).rows.size == 0 and len(cache) == 1  # not kept
    cache.get("b", lambda: user(2))
    cache.get("a", lambda: user(3))  # a is now the newest
    cache.get("c", lambda: user(1))  # evicts b, the least recently used
    assert cache.get("a", lambda: user(9)) is a
    assert cache.get("b", lambda: user(4)).rows.size == 4  # rebuilt
    assert (cache.hits, cache.misses) == (3, 5)
    cache.clear()
    assert len(cache) == 0


@pytest.fixture()
def model(model_root: Path):
    m = LoadedModel.load(model_root, None, WorkerConfig(threads=1), Metrics())
    yield m
    m.close()


def _job(
    m: LoadedModel, user: str, history: list[tuple[str, float, float]], seen: tuple[str, ...] = ()
) -> RankJob:
    return build_job(
        m,
        user_id=user,
        forgotten_at=0.0,
        history=history,
        exclude=(),
        dismissed=(),
        seen=seen,
        include_categories=(),
        exclude_categories=(),
        k=10,
        include_seen=False,
        context=JobContext(),
    )


def test_a_repeat_request_reuses_the_vector_and_answers_exactly_as_a_fresh_fold_in(model) -> None:
    assert model.users is not None
    user = str(next(iter(model.users.ids)))
    live = [(model.catalog[5].item_id, 1.0, 2e9)]
    first = _job(model, user, live)
    assert first.folded is not None and first.folded.vector is None
    fresh = model.ranker.rank([first])[0]
    assert first.folded.vector is not None  # kept for the next request
    hits = model.ranker.metrics.counters["folded_user_hits"]
    again = _job(model, user, list(live))
    assert again.folded is first.folded  # same inputs: the same entry, no rebuilding
    assert model.ranker.metrics.counters["folded_user_hits"] == hits + 1  # what operators see
    cached = model.ranker.rank([again])[0]
    refolded = model.ranker.rank([dataclasses.replace(again, folded=None)])[0]
    for r in (cached, refolded):
        assert np.array_equal(r.rows, fresh.rows) and np.array_equal(r.scores, fresh.scores)
    # In a batch beside users without a vector yet, the kept one is used as it is.
    other = _job(model, str(list(model.users.ids)[1]), [])
    batch = model.ranker.rank([other, again])
    assert np.array_equal(batch[1].rows, fresh.rows) and np.array_equal(batch[1].scores, fresh.scores)

    # A new event, a new seen id or a forget is a different request: a new entry, a new vector.
    newer = _job(model, user, [(model.catalog[7].item_id, 1.0, 2e9 + 60), *live])
    assert newer.folded is not first.folded
    model.ranker.rank([newer])
    assert newer.folded is not None and not np.array_equal(newer.folded.vector, first.folded.vector)
    seen = _job(model, user, live, seen=(model.catalog[9].item_id,))
    assert seen.folded is not first.folded and 9 in seen.seen_rows.tolist()
    forgotten = build_job(
        model,
        user_id=user,
        forgotten_at=model.forgotten_through + 1.0,
        history=live,
        exclude=(),
        dismissed=(),
        seen=(),
        include_categories=(),
        exclude_categories=(),
        k=10,
        include_seen=False,
        context=JobContext(),
    )
    assert forgotten.history_rows.size == 1  # only the live event: the held history is gone


def test_adding_an_item_clears_the_kept_users(model) -> None:
    live = [("brand-new", 1.0, 2e9), (model.catalog[3].item_id, 1.0, 2e9 - 1)]
    before = _job(model, "anon-7", live)
    assert before.history_rows.tolist() == [3]  # the unknown id is skipped, for now
    model.ranker.rank([before])
    assert len(model.folded_users) == 1
    LiveCatalog().apply(model, [Change(1, False, CatalogItem("brand-new", "Brand New (2026)", "", ()))])
    assert len(model.folded_users) == 0
    after = _job(model, "anon-7", live)
    assert after.folded is not before.folded
    assert after.history_rows.tolist() == [model.item_index["brand-new"], 3]
