"""The worker's live catalog on a real loaded model version (FAISS index, ONNX scorer):
appended items are retrieved and ranked, deleted ones never come back, the log is
applied exactly once and in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recgen.config import WorkerConfig
from recgen.repository import CatalogItem
from worker.live_catalog import CatalogGap, Change, LiveCatalog
from worker.metrics import Metrics
from worker.model import LoadedModel
from worker.ranking import RankJob


@pytest.fixture()
def model(model_root: Path):
    m = LoadedModel.load(model_root, None, WorkerConfig(threads=1), Metrics())
    yield m
    m.close()


def job(history: list[int], k: int = 10, allowed: np.ndarray | None = None) -> RankJob:
    rows = np.asarray(history, np.int64)
    return RankJob(rows, np.ones(rows.size, np.float32), np.zeros(0, np.int64), k, allowed=allowed)


def upsert(seq: int, item_id: str, title: str, cats: tuple[str, ...] = ()) -> Change:
    return Change(seq, False, CatalogItem(item_id, title, "", cats))


def test_new_item_without_encoder_gets_its_categories_mean_factor(model) -> None:
    n = len(model.catalog)
    live = LiveCatalog()
    assert live.apply(model, [upsert(1, "live-x", "Live X", ("Horror",))]) == 1
    row = model.item_index["live-x"]
    assert row == n and model.catalog[row].title == "Live X"
    horror = model.categories["horror"]
    assert horror[row] and horror.sum() > 1
    expected = model.ranker.factors[:n][horror[:n]].mean(axis=0)
    np.testing.assert_allclose(model.ranker.factors[row], expected, rtol=1e-5)
    assert model.ranker.retriever.ntotal == n + 1
    # Exact path (category filter): it is the only Horror item left once the others are excluded.
    allowed = np.zeros(n + 1, dtype=bool)
    allowed[row] = True
    res = model.ranker.rank([job([0, 1, 2], allowed=allowed)])
    assert res[0].rows.tolist() == [row]


def test_appended_item_is_retrieved_through_the_index(model) -> None:
    hist = [0, 1, 2, 3]
    base = model.ranker.rank([job(hist, k=5)])[0]
    user = model.ranker.foldin.user_vectors([(np.asarray(hist), np.full(4, 1 + model.ranker.alpha))])[0]
    # An item aligned with this user and with a large norm must come first.
    longest = float(np.linalg.norm(model.ranker.factors, axis=1).max())
    model.ranker.append_items(user[None, :] / np.linalg.norm(user) * 2 * longest)
    model.catalog.append(CatalogItem("aligned", "Aligned"))
    res = model.ranker.rank([job(hist, k=5)])[0]
    assert res.rows[0] == len(model.catalog) - 1
    assert res.rows[1:].tolist() == base.rows[:4].tolist()


def test_deleted_items_leave_every_answer(model) -> None:
    hist = [10, 11, 12]
    warm = model.ranker.rank([job(hist, k=20)])[0].rows
    cold = model.ranker.rank([job([], k=20)])[0].rows
    gone = np.unique(np.concatenate([warm[:5], cold[:5]]))
    live = LiveCatalog()
    changes = [Change(i + 1, True, CatalogItem(model.catalog[r].item_id, "")) for i, r in enumerate(gone)]
    live.apply(model, changes)
    warm2 = model.ranker.rank([job(hist, k=20)])[0].rows
    cold2 = model.ranker.rank([job([], k=20)])[0].rows
    assert not set(gone) & set(warm2.tolist()) and not set(gone) & set(cold2.tolist())
    assert len(warm2) == 20 and len(cold2) == 20
    assert warm2[:15].tolist() == [r for r in warm.tolist() if r not in set(gone)][:15]
    sims, _ = model.ranker.similar(int(warm2[0]), 50)
    assert not set(gone) & set(sims.tolist())
    # An upsert brings one back.
    back = int(cold[0])  # the most popular item: a cold user's first pick once it is back
    live.apply(model, [Change(len(changes) + 1, False, model.catalog[back])])
    assert not model.ranker.deleted[back]
    assert model.ranker.rank([job([], k=20)])[0].rows[0] == back  # the kept cold prefix was rebuilt


def test_log_applies_once_and_in_order(model) -> None:
    live = LiveCatalog()
    n = len(model.catalog)
    live.apply(model, [upsert(1, "a", "A"), upsert(2, "b", "B")])
    assert live.apply(model, [upsert(1, "a", "A"), upsert(2, "b", "B")]) == 2  # resent: skipped
    assert len(model.catalog) == n + 2
    with pytest.raises(CatalogGap, match="catalog change 4 arrived, but 3"):
        live.apply(model, [upsert(4, "d", "D")])
    assert live.apply(model, [upsert(3, "c", "C"), upsert(4, "d", "D")]) == 4
    assert len(model.catalog) == n + 4


def test_replay_brings_a_new_version_to_the_same_catalog(model, model_root: Path) -> None:
    live = LiveCatalog()
    gone = model.catalog[5].item_id
    live.apply(model, [upsert(1, "r1", "R1", ("Drama",)), Change(2, True, CatalogItem(gone, ""))])
    fresh = LoadedModel.load(model_root, None, WorkerConfig(threads=1), Metrics())
    try:
        live.replay(fresh)
        assert [it.item_id for it in fresh.catalog] == [it.item_id for it in model.catalog]
        assert fresh.ranker.deleted[5] and fresh.ranker.deleted.sum() == 1
        np.testing.assert_allclose(fresh.ranker.factors, model.ranker.factors, rtol=1e-6)
    finally:
        fresh.close()
