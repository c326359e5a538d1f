"""The peers recgen is measured against, fitted in the same run: implicit iALS, EASE, popularity.

Each is tuned on a validation split carved from the train part, refitted on
all of it, and scored offline; none of them is served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tools.quality.data import Data
from tools.quality.metrics import K, rank_metrics, top_k
from tools.quality.splits import Split, validation_split

LOG = logging.getLogger(__name__)

IALS_FACTORS = (32, 64, 128)
IALS_REGS = (0.01, 0.05, 0.1, 0.5, 1.0)
IALS_ALPHAS = (1.0, 2.0, 5.0, 10.0, 20.0)
IALS_ITERATIONS = 15
IALS_QUICK_CONFIGS = 12
EASE_LAMBDAS = (50.0, 100.0, 200.0, 500.0, 1000.0)
EASE_MAX_ITEMS = 20_000


def interaction_matrix(user: np.ndarray, item: np.ndarray, rows: np.ndarray, n_users: int, n_items: int):
    """Binary CSR (users x items) of the given rows: every interaction a positive."""
    from scipy.sparse import csr_matrix

    x = csr_matrix(
        (np.ones(rows.size, np.float32), (user[rows], item[rows])), shape=(n_users, n_items), dtype=np.float32
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def score_top(
    x, users: np.ndarray, score: Callable[[np.ndarray], np.ndarray], k: int = K, chunk: int = 1024
) -> np.ndarray:
    """Top k of score(users chunk) -> (chunk, n_items), each user's train items excluded."""
    out = [np.zeros((0, k), dtype=np.int64)]
    for s in range(0, users.size, chunk):
        u = users[s : s + chunk]
        out.append(top_k(score(u), x[u].toarray() > 0, k))
    return np.concatenate(out)


def popularity_scorer(x) -> Callable[[np.ndarray], np.ndarray]:
    pop = np.asarray(x.sum(axis=0)).ravel()
    return lambda u: np.broadcast_to(pop, (u.size, pop.size))


class Ease:
    """EASE: B = I - P / diag(P), P = (XᵀX + λI)⁻¹, diag(B) = 0; scores X_u B."""

    def __init__(self, x) -> None:
        self.x = x
        self.gram = (x.T @ x).toarray().astype(np.float64)

    def scorer(self, lam: float) -> Callable[[np.ndarray], np.ndarray]:
        g = self.gram + lam * np.eye(self.gram.shape[0])
        p = np.linalg.inv(g)
        b = -p / np.diag(p)
        np.fill_diagonal(b, 0.0)
        return lambda u: np.asarray(self.x[u] @ b)


def fit_implicit(x, factors: int, reg: float, alpha: float, seed: int, threads: int):
    """implicit's CPU iALS, BLAS pinned to one thread (its own pool: `threads`)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        m = AlternatingLeastSquares(
            factors=factors,
            regularization=reg,
            alpha=alpha,
            iterations=IALS_ITERATIONS,
            random_state=seed,
            num_threads=threads,
        )
        m.fit(x, show_progress=False)
    uf, itf = np.asarray(m.user_factors), np.asarray(m.item_factors)
    return lambda u: uf[u] @ itf.T


def ials_grid(quick: bool, seed: int) -> list[tuple[int, float, float]]:
    grid = [(f, r, a) for f in IALS_FACTORS for r in IALS_REGS for a in IALS_ALPHAS]
    if not quick:
        return grid
    pick = np.random.default_rng(seed).choice(len(grid), IALS_QUICK_CONFIGS, replace=False)
    return [grid[i] for i in sorted(pick)]


def fit_peers(
    protocol: str, data: Data, split: Split, seed: int, quick: bool, threads: int, users: np.ndarray
) -> dict[str, Any]:
    """Tune implicit iALS and EASE on a validation split carved from the train part; refit on all
    of it; top 10 of the test users `users` for every peer."""
    n_u, n_i = data.n_users, data.n_items
    val = validation_split(protocol, data.user, data.item, data.ts, split, seed)
    xv = interaction_matrix(data.user, data.item, val.train_rows, n_u, n_i)
    x = interaction_matrix(data.user, data.item, split.train_rows, n_u, n_i)
    out: dict[str, Any] = {}

    t = time.perf_counter()
    trials = []
    for f, r, a in ials_grid(quick, seed):
        sc = fit_implicit(xv, f, r, a, seed, threads)
        res = rank_metrics(score_top(xv, val.test_users, sc), val.test_items, n_i)
        trials.append({"factors": f, "regularization": r, "alpha": a, "validation_ndcg@10": res["ndcg@10"]})
    best = max(trials, key=lambda tr: tr["validation_ndcg@10"])
    sc = fit_implicit(x, best["factors"], best["regularization"], best["alpha"], seed, threads)
    out["implicit_als"] = {
        "top": score_top(x, users, sc),
        "params": {k: best[k] for k in ("factors", "regularization", "alpha")}
        | {"iterations": IALS_ITERATIONS},
        "validation_ndcg@10": best["validation_ndcg@10"],
        "configs_tried": len(trials),
        "trials": trials,
        "seconds": round(time.perf_counter() - t, 1),
    }
    LOG.info(
        "%s: implicit iALS chose %s (%.1f s)",
        protocol,
        out["implicit_als"]["params"],
        time.perf_counter() - t,
    )

    if n_i <= EASE_MAX_ITEMS:
        t = time.perf_counter()
        ease_v = Ease(xv)
        lt = []
        for lam in EASE_LAMBDAS:
            res = rank_metrics(score_top(xv, val.test_users, ease_v.scorer(lam)), val.test_items, n_i)
            lt.append({"lambda": lam, "validation_ndcg@10": res["ndcg@10"]})
        eb = max(lt, key=lambda tr: tr["validation_ndcg@10"])
        out["ease"] = {
            "top": score_top(x, users, Ease(x).scorer(eb["lambda"])),
            "params": {"lambda": eb["lambda"]},
            "validation_ndcg@10": eb["validation_ndcg@10"],
            "trials": lt,
            "seconds": round(time.perf_counter() - t, 1),
        }
    out["popularity"] = {"top": score_top(x, users, popularity_scorer(x)), "params": {}}
    return out
