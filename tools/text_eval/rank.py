"""What each case's text is about: its history and the served model's recommendations for it.

Every case is an anonymous live user whose history is its liked items (newest first, a minute
apart, weight 1 each), folded and decayed as the worker folds a request's live events
(recgen/core/user_history.py), with its intent and locale as the request context, and ranked by
the version's own `Ranker` in process (worker/ranking.py), top K, history excluded. The prompt then
shows the first SHOW history items and the first SHOW recommended ones, as worker/service.py
does. No generation here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recgen.core.prompt import MAX_HISTORY, MAX_RECOMMENDED
from recgen.core.user_history import empty_history, fold_in_weights, merge_live
from tools.text_eval.cases import Case
from worker.context import JobContext
from worker.model import LoadedModel
from worker.ranking import RankJob

K = 10  # recommendations asked for per case (the text presents the first MAX_RECOMMENDED)
EVENT_GAP_S = 60.0


@dataclass(frozen=True)
class Shown:
    """One case as its prompt shows it: catalog rows, history newest first, recommended best first."""

    case: Case
    history_rows: tuple[int, ...]  # (≤ MAX_HISTORY,)
    rec_rows: tuple[int, ...]  # (≤ MAX_RECOMMENDED,)


def rank_job(model: LoadedModel, case: Case) -> RankJob:
    rows = np.asarray([model.item_index[i] for i in case.history if i in model.item_index], dtype=np.int64)
    end = model.data_end if np.isfinite(model.data_end) else 0.0
    ts = end - EVENT_GAP_S * np.arange(1, rows.size + 1, dtype=np.float64)
    h = merge_live(empty_history(), rows, np.ones(rows.size, np.float32), ts, model.data_end)
    hist, weights = fold_in_weights(h.rows, h.weights, h.ts)
    return RankJob(
        history_rows=hist,
        history_weights=weights,
        exclude_rows=np.zeros(0, np.int64),
        k=K,
        context=JobContext(locale=case.locale, intent=case.intent),
        seen_rows=h.seen,
    )


def shown_cases(model: LoadedModel, cases: Sequence[Case]) -> list[Shown]:
    """Rank every case in one batch; what each prompt will show."""
    jobs = [rank_job(model, c) for c in cases]
    results = model.ranker.rank(jobs)
    out = []
    for c, job, res in zip(cases, jobs, results, strict=True):
        recs = tuple(int(r) for r in res.rows[:MAX_RECOMMENDED])
        assert recs, f"case {c.case}: the ranker returned nothing"
        out.append(Shown(c, tuple(int(r) for r in job.history_rows[:MAX_HISTORY]), recs))
    return out
