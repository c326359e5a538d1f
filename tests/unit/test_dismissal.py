"""DISMISS demotes the dismissed item's near neighbours a little (recgen/core/dismissal.py),
on a real loaded model version, for warm and cold users."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recgen.config import WorkerConfig
from recgen.core.dismissal import DEMOTION, SIMILAR_FROM, demote_neighbours
from worker.metrics import Metrics
from worker.model import LoadedModel
from worker.ranking import RankJob


@pytest.fixture(scope="module")
def model(model_root: Path):
    m = LoadedModel.load(model_root, None, WorkerConfig(threads=1), Metrics())
    yield m
    m.close()


def job(history: list[int], dismissed: list[int], k: int = 20) -> RankJob:
    rows = np.asarray(history, np.int64)
    d = np.asarray(dismissed, np.int64)
    return RankJob(rows, np.ones(rows.size, np.float32), d, k, dismissed_rows=d)


def nearest(model, row: int, avoid: set[int]) -> int:
    sims = model.ranker.unit @ model.ranker.unit[row]
    for r in np.argsort(-sims):
        if int(r) != row and int(r) not in avoid:
            return int(r)
    raise AssertionError


@pytest.mark.parametrize("history", [[10, 11, 12, 13], []], ids=["warm", "cold"])
def test_neighbours_of_a_dismissed_item_sink_and_others_do_not(model, history: list[int]) -> None:
    before = model.ranker.rank([job(history, [])])[0]
    top = int(before.rows[0])
    z = nearest(model, top, set(before.rows.tolist()) | set(history))  # outside the answer
    cos = float(model.ranker.unit[top] @ model.ranker.unit[z])
    assert cos > SIMILAR_FROM, cos
    after = model.ranker.rank([job(history, [z])])[0]
    old = dict(zip(before.rows.tolist(), before.scores.tolist(), strict=True))
    new = dict(zip(after.rows.tolist(), after.scores.tolist(), strict=True))
    assert z not in new
    assert new.get(top, -np.inf) < old[top]  # the near neighbour sank
    unrelated = [
        r for r in old if r in new and float(model.ranker.unit[r] @ model.ranker.unit[z]) < SIMILAR_FROM
    ]
    assert unrelated and all(new[r] == pytest.approx(old[r]) for r in unrelated)


def test_demotion_is_bounded_by_the_spread() -> None:
    unit = np.eye(3, dtype=np.float32)
    scores = np.array([[3.0, 2.0, 1.0]])
    picked = np.array([[0, 1, 2]])
    out = demote_neighbours(scores, picked, unit, [np.array([0])])
    assert out[0, 0] == pytest.approx(3.0 - DEMOTION * 2.0)  # identical item: full demotion
    assert out[0, 1:].tolist() == [2.0, 1.0]  # orthogonal items: untouched
    assert demote_neighbours(scores, picked, unit, [np.zeros(0, np.int64)]).tolist() == scores.tolist()
