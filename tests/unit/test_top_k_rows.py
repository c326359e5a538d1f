"""worker.ranking.top_k on the few-row path (a lone request's pool: row by row) equals a stable
argsort, ties by column and -inf scores included, as the batch path does."""

from __future__ import annotations

import numpy as np

from worker.ranking import FEW_ROWS, SORT_MAX, top_k


def test_few_rows_equal_a_stable_argsort_with_ties_and_missing_scores() -> None:
    rng = np.random.default_rng(3)
    for n_rows in range(1, FEW_ROWS + 2):  # the row-by-row path and the batch path after it
        for cols in (SORT_MAX + 1, 1682):
            scores = rng.integers(0, 6, size=(n_rows, cols)).astype(np.float32)  # many ties
            scores[rng.random(scores.shape) < 0.05] = -np.inf
            scores[0, : cols - 3] = -np.inf  # fewer finite scores than k in one row
            for k in (1, 10, 50):
                expect = np.argsort(-scores, axis=1, kind="stable")[:, :k]
                assert np.array_equal(top_k(scores, k), expect), (n_rows, cols, k)
