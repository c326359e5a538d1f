"""Served ranking quality against strong peers fitted in the same run (`make quality`).

For each protocol the data are split once; the train part is written as CSV
and built into a model version by the real `recgen export` (a subprocess; it
tunes on a validation split carved from that train part only); the version is
served by a real `recgen serve` (gateway + 1 worker, loopback), and every test
user's top 10 is fetched through the public gRPC API (`Recommend(user_id, k=10)`,
no request context). The server excludes every item the user has in the train
part; the peers, fitted on the same train part in the same run, exclude the
same items:

- implicit iALS (`implicit` 0.7.3, conjugate gradient, 15 iterations), tuned over
  factors {32, 64, 128} x regularization {0.01, 0.05, 0.1, 0.5, 1} x alpha
  {1, 2, 5, 10, 20} (all 75, or 12 drawn at random with --quick) by NDCG@10 on
  a validation split carved from the train part the same way as the protocol,
  then refitted on the whole train part;
- EASE (Steck 2019), lambda in {50, 100, 200, 500, 1000} tuned the same way
  (catalogs of at most 20,000 items);
- popularity (train interaction counts).

Protocols:

1. leave_last_one_out: each user's last interaction by time (ties: file order)
   is the test item; users with >= 2 interactions.
2. random_80_20: per user, a random 20 % of the interactions (at least one,
   leaving at least one) are test; users with >= 2 interactions; seeds 0, 1, 2
   (mean +- sample sd over seeds).
3. global_time: the newest 20 % of all interactions by time (ties: file order)
   are test; test users are those with at least one train interaction.

Everywhere a test item the user also has in the train part is dropped (the
server could never recommend it), and users left without test items are not
test users. Metrics at k = 10, averaged over test users, binary relevance:
HR@10 (a test item in the list), NDCG@10 (DCG over the list / the ideal DCG of
min(|test|, 10) hits), recall@10 (hits / min(|test|, 10)), catalog coverage@10
(distinct items over all lists / catalog size).

    python -m tools.quality [--quick] [--out docs/quality.json] [--md docs/quality.md]
    python -m tools.quality [--quick] ...

Loopback only; every server started is stopped whatever happens.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tools.quality_args import add_quality_arguments

LOG = logging.getLogger(__name__)

K = 10
ROOT = Path(__file__).resolve().parent.parent
IALS_FACTORS = (32, 64, 128)
IALS_REGS = (0.01, 0.05, 0.1, 0.5, 1.0)
IALS_ALPHAS = (1.0, 2.0, 5.0, 10.0, 20.0)
IALS_ITERATIONS = 15
IALS_QUICK_CONFIGS = 12
EASE_LAMBDAS = (50.0, 100.0, 200.0, 500.0, 1000.0)
EASE_MAX_ITEMS = 20_000
TEST_FRAC = 0.2
RANDOM_SEEDS = (0, 1, 2)
PROTOCOLS = ("leave_last_one_out", "random_80_20", "global_time")
MODELS = ("recgen", "implicit_als", "ease", "popularity")
LABELS = {
    "recgen": "recgen, served (gRPC)",
    "implicit_als": "implicit iALS, tuned",
    "ease": "EASE, tuned",
    "popularity": "popularity",
    "recgen_offline": "recgen version, offline fold-in",
    "recgen_previous_grid": "recgen, served, previous tuning grid",
}
METRICS = ("hr@10", "ndcg@10", "recall@10", "coverage@10")


# --------------------------------------------------------------------------- splits


@dataclass
class Split:
    """Train rows (indices into the dataset) and each test user's test items."""

    train_rows: np.ndarray  # sorted
    test_users: np.ndarray  # (m,) user indices
    test_items: list[np.ndarray]  # per test user: unique item indices, none in the user's train rows


def _rows(n: int, rows: np.ndarray | None) -> np.ndarray:
    return np.arange(n, dtype=np.int64) if rows is None else np.sort(np.asarray(rows, dtype=np.int64))


def _finish(user: np.ndarray, item: np.ndarray, train: np.ndarray, test: np.ndarray) -> Split:
    """Group test rows by user; keep users with a train row and a test item not in their train."""
    train = np.sort(train)
    seen = set(zip(user[train].tolist(), item[train].tolist(), strict=True))
    has_train = set(user[train].tolist())
    by_user: dict[int, set[int]] = {}
    for u, i in zip(user[test].tolist(), item[test].tolist(), strict=True):
        if u in has_train and (u, i) not in seen:
            by_user.setdefault(u, set()).add(i)
    users = sorted(by_user)
    return Split(
        train_rows=train,
        test_users=np.asarray(users, dtype=np.int64),
        test_items=[np.asarray(sorted(by_user[u]), dtype=np.int64) for u in users],
    )


def leave_last_one_out(
    user: np.ndarray, item: np.ndarray, ts: np.ndarray, rows: np.ndarray | None = None
) -> Split:
    """Each user's last row by time (ties: the later file row) is test; users with >= 2 rows."""
    rows = _rows(len(user), rows)
    order = rows[np.lexsort((rows, ts[rows], user[rows]))]
    u = user[order]
    last = np.ones(order.size, dtype=bool)
    last[:-1] = u[:-1] != u[1:]
    counts = np.bincount(u, minlength=int(user.max(initial=-1)) + 1) if u.size else np.zeros(0, np.int64)
    test_mask = last & (counts[u] >= 2)
    return _finish(user, item, order[~test_mask], order[test_mask])


def random_split(
    user: np.ndarray, seed: int, frac: float = TEST_FRAC, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per user, a random `frac` of the rows (round half up, >= 1, leaving >= 1) -> (train, test)."""
    rows = _rows(len(user), rows)
    keys = np.random.default_rng(seed).random(rows.size)
    order = rows[np.lexsort((keys, user[rows]))]
    u = user[order]
    start = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1] if u.size else np.zeros(0, np.int64)
    size = np.diff(np.r_[start, u.size])
    n_test = np.where(size >= 2, np.clip(np.floor(frac * size + 0.5), 1, size - 1), 0).astype(np.int64)
    rank = np.arange(u.size) - np.repeat(start, size)
    test_mask = rank < np.repeat(n_test, size)
    return order[~test_mask], order[test_mask]


def random_80_20(
    user: np.ndarray, item: np.ndarray, seed: int, frac: float = TEST_FRAC, rows: np.ndarray | None = None
) -> Split:
    train, test = random_split(user, seed, frac, rows)
    return _finish(user, item, train, test)


def global_time(
    user: np.ndarray,
    item: np.ndarray,
    ts: np.ndarray,
    frac: float = TEST_FRAC,
    rows: np.ndarray | None = None,
) -> Split:
    """The newest `frac` of the rows by time (ties: file order) are test."""
    rows = _rows(len(user), rows)
    order = rows[np.lexsort((rows, ts[rows]))]
    n_test = int(np.floor(frac * order.size + 0.5))
    cut = order.size - n_test
    return _finish(user, item, order[:cut], order[cut:])


def make_split(
    protocol: str,
    user: np.ndarray,
    item: np.ndarray,
    ts: np.ndarray,
    seed: int,
    rows: np.ndarray | None = None,
) -> Split:
    if protocol == "leave_last_one_out":
        return leave_last_one_out(user, item, ts, rows)
    if protocol == "random_80_20":
        return random_80_20(user, item, seed, rows=rows)
    if protocol == "global_time":
        return global_time(user, item, ts, rows=rows)
    raise ValueError(protocol)


def validation_split(
    protocol: str, user: np.ndarray, item: np.ndarray, ts: np.ndarray, split: Split, seed: int
) -> Split:
    """Carved from the train part only, the same way as the protocol (another seed when random)."""
    return make_split(protocol, user, item, ts, seed + 1000, rows=split.train_rows)


# --------------------------------------------------------------------------- metrics


def top_k(scores: np.ndarray, seen: np.ndarray, k: int = K) -> np.ndarray:
    """(m, n) scores, (m, n) bool seen -> (m, k) item indices, best first; -1 where fewer remain.

    Ties go to the lower item index."""
    s = np.where(seen, -np.inf, scores.astype(np.float64))
    m, n = s.shape
    kk = min(k, n)
    part = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (m, 1))
    ps = np.take_along_axis(s, part, axis=1)
    order = np.lexsort((part, -ps), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    top = np.where(np.isneginf(np.take_along_axis(ps, order, axis=1)), -1, top)
    if kk < k:
        top = np.hstack([top, np.full((m, k - kk), -1, dtype=top.dtype)])
    return top


def rank_metrics(
    top: np.ndarray, test_items: Sequence[np.ndarray], n_items: int, k: int = K
) -> dict[str, Any]:
    """top: (m, >= k) item indices (-1: empty slot); test_items: per user, unique item indices.

    HR@k: share of users with a test item in the list; NDCG@k: DCG of binary hits over
    the ideal DCG of min(|test|, k) hits; recall@k: hits / min(|test|, k); coverage@k:
    distinct listed items / n_items."""
    top = np.asarray(top)[:, :k]
    m = len(test_items)
    assert top.shape[0] == m, (top.shape, m)
    disc = 1.0 / np.log2(np.arange(k) + 2.0)
    ideal = np.cumsum(disc)
    hr = np.zeros(m)
    ndcg = np.zeros(m)
    recall = np.zeros(m)
    for j in range(m):
        rel = np.isin(top[j], test_items[j]) & (top[j] >= 0)
        n_rel = min(len(test_items[j]), k)
        hits = int(rel.sum())
        hr[j] = hits > 0
        ndcg[j] = float(disc[rel].sum()) / ideal[n_rel - 1] if n_rel else 0.0
        recall[j] = hits / n_rel if n_rel else 0.0
    listed = np.unique(top[top >= 0])
    return {
        "hr@10": float(hr.mean()) if m else 0.0,
        "ndcg@10": float(ndcg.mean()) if m else 0.0,
        "recall@10": float(recall.mean()) if m else 0.0,
        "coverage@10": float(listed.size / n_items) if n_items else 0.0,
        "users": int(m),
    }


# --------------------------------------------------------------------------- peers


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


# --------------------------------------------------------------------------- data and files


@dataclass
class Data:
    user: np.ndarray  # (n,) int64
    item: np.ndarray  # (n,) int64
    ts: np.ndarray  # (n,) float64
    rating: np.ndarray  # (n,) float64
    user_ids: list[str]
    items: list[Any]  # recgen.repository.CatalogItem, row order
    source: str

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.items)


def load_data(interactions: str | None, items: str | None, wheels: str) -> Data:
    from export.data import load_files, load_movielens100k

    if bool(interactions) != bool(items):
        raise SystemExit("python -m tools.quality: --interactions and --items go together")
    ds = load_files(interactions, items) if interactions else load_movielens100k(wheels)
    return Data(
        user=ds.user.astype(np.int64),
        item=ds.item.astype(np.int64),
        ts=ds.timestamp.astype(np.float64),
        rating=ds.rating.astype(np.float64),
        user_ids=list(ds.users),
        items=list(ds.items),
        source=ds.source,
    )


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def write_train(data: Data, rows: np.ndarray, directory: Path) -> tuple[Path, Path]:
    """train.csv (user_id,item_id,rating,timestamp; rows in file order) and items.csv."""
    directory.mkdir(parents=True, exist_ok=True)
    inter, items = directory / "train.csv", directory / "items.csv"
    with inter.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "rating", "timestamp"])
        for r in np.sort(rows).tolist():
            w.writerow(
                [
                    data.user_ids[data.user[r]],
                    data.items[data.item[r]].item_id,
                    _num(data.rating[r]),
                    _num(data.ts[r]),
                ]
            )
    with items.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "categories"])
        for it in data.items:
            w.writerow([it.item_id, it.title, "|".join(it.categories)])
    return inter, items


# --------------------------------------------------------------------------- recgen, for real


def _recgen(*args: str, **kw: Any) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "recgen.cli", *args], cwd=ROOT, env=env, **kw)


# The export's tuning grid before `make quality` measured it (export/pipeline.py TUNING_GRID):
# `--compare-grid` builds a second version per split with it, for a before/after in one run.
PREVIOUS_GRID = ((32, 0.01, 1.0), (32, 0.1, 2.0), (64, 0.05, 1.0), (64, 0.5, 3.0))
_WITH_GRID = (
    "import sys; import export.pipeline as p; from export.mf import ALSParams; "
    "p.TUNING_GRID = [ALSParams(factors=f, reg=r, alpha=a) for f, r, a in {grid!r}]; "
    "from recgen.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run_export(
    models: Path,
    inter: Path,
    items: Path,
    log: Path,
    timeout: float = 3600.0,
    grid: Sequence[tuple[int, float, float]] | None = None,
) -> dict[str, Any]:
    """`recgen export` as a subprocess; returns the manifest of the version it wrote.

    grid: (factors, reg, alpha) candidates to tune over instead of the export's own grid."""
    args = ["export", "--models", str(models), "--interactions", str(inter), "--items", str(items)]
    args += ["--no-llm", "--no-encoder", "--quiet"]
    with log.open("w") as f:
        if grid is None:
            p = _recgen(*args, stdout=f, stderr=subprocess.STDOUT)
        else:
            code = _WITH_GRID.format(grid=tuple(grid))
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            cmd = [sys.executable, "-c", code, *args]
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            code = p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"recgen export exited with {code}:\n{tail}")
    version = json.loads((models / "SERVING").read_text())["version"]
    return json.loads((models / version / "manifest.json").read_text())


class Server:
    """`recgen serve` on a free port (--port 0; the port is read from its stdout)."""

    def __init__(self, models: Path, state: Path, log: Path, workers: int = 1) -> None:
        self.args = ["serve", "--models", str(models), "--port", "0", "--state", str(state)]
        self.args += ["--workers", str(workers)]
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 300.0) -> Server:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self._err = self.log.open("w")
        self.proc = _recgen(*self.args, stdout=subprocess.PIPE, stderr=self._err, text=True)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(
                    f"recgen serve exited with {self.proc.wait()} before serving (see {self.log})"
                )
            if line.startswith("recgen: serving on "):
                self.port = int(line.rsplit(":", 1)[1])
                break
        else:
            raise TimeoutError("recgen serve did not start")
        # Keep reading stdout so a chatty server never blocks on a full pipe.
        threading.Thread(target=lambda s=self.proc.stdout: [None for _ in s], daemon=True).start()
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"recgen serve exited with {self.proc.returncode} (see {self.log})")
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"{self.target} not serving after {timeout} s")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_err", None) is not None:
            self._err.close()


def fetch_served(
    target: str, user_ids: Sequence[str], concurrency: int = 8
) -> tuple[list[list[str]], set[str]]:
    """Each user's served top 10 (Recommend, k=10, no context); and the model versions seen."""
    import grpc

    from recgen.v1 import recommender_pb2 as pb
    from recgen.v1 import recommender_pb2_grpc as pbg

    versions: set[str] = set()
    with grpc.insecure_channel(target) as ch:
        stub = pbg.RecommenderStub(ch)

        def one(uid: str) -> list[str]:
            for attempt in range(4):
                try:
                    resp = stub.Recommend(pb.RecommendRequest(user_id=uid, k=K), timeout=60)
                    versions.add(resp.model_version)
                    return [it.item_id for it in resp.items]
                except grpc.RpcError as e:
                    retry = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
                    if attempt == 3 or e.code() not in retry:
                        raise
                    time.sleep(0.5 * (attempt + 1))
            raise AssertionError("unreachable")

        with ThreadPoolExecutor(concurrency) as ex:
            return list(ex.map(one, user_ids)), versions


def served_top(
    answers: Sequence[Sequence[str]], item_row: dict[str, int], k: int = K
) -> tuple[np.ndarray, int]:
    """Item ids -> (m, k) rows, -1 padded; and how many returned ids are not in the catalog."""
    top = np.full((len(answers), k), -1, dtype=np.int64)
    unknown = 0
    for j, ids in enumerate(answers):
        for r, iid in enumerate(ids[:k]):
            row = item_row.get(iid, -1)
            unknown += row < 0
            top[j, r] = row
    return top, unknown


def offline_top(data: Data, split: Split, version: Path, mf: dict[str, Any], users: np.ndarray) -> np.ndarray:
    """Diagnostic: the version's item factors, fold-in of each user's train rows (weight 1 each,
    no decay, no cap: the export's own held-out evaluation), train items excluded."""
    from recgen.core.foldin import FoldIn

    catalog_ids = [
        json.loads(line)["item_id"] for line in (version / "catalog.jsonl").read_text().splitlines()
    ]
    ours = {iid: r for r, iid in enumerate(catalog_ids)}
    to_version = np.asarray([ours.get(it.item_id, -1) for it in data.items], dtype=np.int64)
    assert (to_version >= 0).all(), "the version's catalog misses items of the data"
    factors = np.load(version / "item_factors.npy")[to_version]  # rows in the data's item order
    fold = FoldIn(factors, float(mf["reg"]))
    x = interaction_matrix(data.user, data.item, split.train_rows, data.n_users, data.n_items)
    alpha = float(mf["alpha"])

    def score(u: np.ndarray) -> np.ndarray:
        hist = []
        for uu in u.tolist():
            cols = x.indices[x.indptr[uu] : x.indptr[uu + 1]].astype(np.int64)
            hist.append((cols, np.full(cols.size, 1.0 + alpha, np.float32)))
        return fold.user_vectors(hist) @ fold.factors.T

    return score_top(x, users, score, chunk=256)


# --------------------------------------------------------------------------- one run


def export_and_serve(
    data: Data,
    split: Split,
    users: np.ndarray,
    tests: list[np.ndarray],
    cfg: Config,
    work: Path,
    grid: Sequence[tuple[int, float, float]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], float, float, float]:
    """`recgen export` the train part (work/train.csv, items.csv), serve it, fetch every test
    user's top 10 over gRPC -> (manifest, metrics, export s, server start s, fetch s)."""
    base = work if grid is None else work.parent
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    manifest = run_export(
        work / "models", base / "train.csv", base / "items.csv", work / "export.log", grid=grid
    )
    t_export = time.perf_counter() - t
    item_row = {it.item_id: r for r, it in enumerate(data.items)}
    server = Server(work / "models", work / "state.db", work / "serve.log", cfg.workers)
    try:
        t = time.perf_counter()
        server.start()
        t_start = time.perf_counter() - t
        t = time.perf_counter()
        answers, versions = fetch_served(server.target, [data.user_ids[u] for u in users], cfg.concurrency)
        t_fetch = time.perf_counter() - t
    finally:
        server.stop()
    assert versions == {manifest["version"]}, f"served {versions}, exported {manifest['version']}"
    top, unknown = served_top(answers, item_row)
    x = interaction_matrix(data.user, data.item, split.train_rows, data.n_users, data.n_items)
    seen = x[users].toarray() > 0
    served = rank_metrics(top, tests, data.n_items) | {
        "params": manifest["params"]["mf"],
        "answers_short_of_10": int(sum(len(a) < K for a in answers)),
        "unknown_item_ids": unknown,
        "train_items_served": int((np.take_along_axis(seen, np.maximum(top, 0), axis=1) & (top >= 0)).sum()),
    }
    return manifest, served, t_export, t_start, t_fetch


@dataclass
class Config:
    quick: bool = False
    seeds: tuple[int, ...] = RANDOM_SEEDS
    max_users: int | None = None  # evaluate a random sample of test users (--quick: 300)
    concurrency: int = 8
    workers: int = 1
    threads: int = 2  # implicit's own thread pool
    protocols: tuple[str, ...] = PROTOCOLS
    keep: Path | None = None  # keep the work directories here
    compare_grid: bool = False  # also serve a version tuned over PREVIOUS_GRID (before/after)


def run_protocol(protocol: str, seed: int, data: Data, cfg: Config, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    split = make_split(protocol, data.user, data.item, data.ts, seed)
    pick = np.arange(split.test_users.size)
    if cfg.max_users is not None and pick.size > cfg.max_users:
        pick = np.sort(np.random.default_rng(seed).choice(pick.size, cfg.max_users, replace=False))
    users = split.test_users[pick]
    tests = [split.test_items[j] for j in pick]
    LOG.info(
        "%s seed %d: %d train rows, %d test users (%d evaluated)",
        protocol,
        seed,
        split.train_rows.size,
        split.test_users.size,
        users.size,
    )
    inter, items = write_train(data, split.train_rows, work)
    manifest, served, t_export, t_start, t_fetch = export_and_serve(data, split, users, tests, cfg, work)
    version = work / "models" / manifest["version"]
    LOG.info(
        "%s seed %d: recgen export chose %s (%.0f s)", protocol, seed, manifest["params"]["mf"], t_export
    )
    results: dict[str, Any] = {"recgen": served}
    if cfg.compare_grid:
        _, prev, *_ = export_and_serve(data, split, users, tests, cfg, work / "previous-grid", PREVIOUS_GRID)
        results["recgen_previous_grid"] = prev
        LOG.info("%s seed %d: previous grid chose %s", protocol, seed, prev["params"])

    t = time.perf_counter()
    peers = fit_peers(protocol, data, split, seed, cfg.quick, cfg.threads, users)
    t_peers = time.perf_counter() - t
    for name, p in peers.items():
        results[name] = rank_metrics(p.pop("top"), tests, data.n_items) | p
    results["recgen_offline"] = rank_metrics(
        offline_top(data, split, version, manifest["params"]["mf"], users), tests, data.n_items
    )
    q = manifest.get("metrics", {}).get("quality", {})
    return {
        "seed": seed,
        "train_rows": int(split.train_rows.size),
        "test_users": int(split.test_users.size),
        "evaluated_users": int(users.size),
        "test_items": int(sum(len(t) for t in split.test_items)),
        "model_version": manifest["version"],
        "recgen_export": {
            "params": manifest["params"]["mf"],
            "tuning": [
                {"params": tr["params"], "validation_ndcg@10": tr["validation"]["ndcg@10"]}
                for tr in q.get("tuning", [])
            ],
            "own_held_out_ndcg@10": q.get("mf", {}).get("ndcg@10"),
        },
        "models": results,
        "seconds": {
            "export": round(t_export, 1),
            "serve_start": round(t_start, 1),
            "fetch": round(t_fetch, 1),
            "peers": round(t_peers, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and metric: mean and sample sd (ddof 1; 0 for one run) over the runs."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in runs[0]["models"]:
        out[name] = {}
        for met in METRICS:
            v = np.asarray([r["models"][name][met] for r in runs if name in r["models"]], dtype=np.float64)
            out[name][met] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0}
    return out


def goal(summary: dict[str, dict[str, dict[str, float]]], served_key: str = "recgen") -> dict[str, Any]:
    """Served NDCG@10 >= tuned iALS, and >= EASE where EASE is stronger than iALS."""
    served = summary[served_key]["ndcg@10"]["mean"]
    ials = summary["implicit_als"]["ndcg@10"]["mean"]
    ease = summary.get("ease", {}).get("ndcg@10", {}).get("mean", -np.inf)
    target_name, target = ("ease", ease) if ease > ials else ("implicit_als", ials)
    return {
        "served_ndcg@10": served,
        "target": target_name,
        "target_ndcg@10": target,
        "gap": served - target,
        "gap_pct": 100.0 * (served - target) / target if target > 0 else None,
        "met": bool(served >= target),
    }


def evaluate(data: Data, cfg: Config, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for protocol in cfg.protocols:
        seeds = cfg.seeds if protocol == "random_80_20" else (0,)
        runs = []
        for seed in seeds:
            work = workdir / f"{protocol}-{seed}"
            runs.append(run_protocol(protocol, seed, data, cfg, work))
        summary = summarize(runs)
        out[protocol] = {"runs": runs, "summary": summary, "goal": goal(summary)}
        if "recgen_previous_grid" in summary:
            out[protocol]["goal_previous_grid"] = goal(summary, "recgen_previous_grid")
        print(protocol_table(protocol, out[protocol]), flush=True)
    return out


# --------------------------------------------------------------------------- report

DESCRIPTIONS = {
    "leave_last_one_out": "temporal leave-last-one-out: each user's last interaction by time (ties: file "
    "order) is the test item; users with >= 2 interactions",
    "random_80_20": "per-user random 80/20 (20 % of each user's interactions, >= 1, are test); "
    "mean +- sd over seeds",
    "global_time": "global time split: the newest 20 % of interactions are test; test users have >= 1 "
    "train interaction",
}


def _cell(s: dict[str, float], multi: bool, digits: int = 4) -> str:
    if multi:
        return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


def _param_text(name: str, run: dict[str, Any]) -> str:
    m = run["models"].get(name, {})
    p = m.get("params", {})
    if name in ("recgen", "recgen_previous_grid"):
        return f"{p.get('factors')} f, λ {p.get('reg'):g}, α {p.get('alpha'):g}, {p.get('iterations')} it"
    if name == "implicit_als":
        return f"{p['factors']} f, reg {p['regularization']:g}, α {p['alpha']:g}"
    if name == "ease":
        return f"λ {p['lambda']:g}"
    return ""


def protocol_rows(protocol: str, res: dict[str, Any]) -> list[list[str]]:
    multi = len(res["runs"]) > 1
    rows = []
    for name in (*MODELS, "recgen_previous_grid", "recgen_offline"):
        if name not in res["summary"]:
            continue
        s = res["summary"][name]
        params = "; ".join(dict.fromkeys(_param_text(name, r) for r in res["runs"]))
        rows.append(
            [LABELS[name], *(_cell(s[m], multi, 3 if m == "coverage@10" else 4) for m in METRICS), params]
        )
    return rows


def _goal_text(g: dict[str, Any]) -> str:
    verdict = "MET" if g["met"] else "MISSED"
    pct = f" ({g['gap_pct']:+.1f} %)" if g["gap_pct"] is not None else ""
    return (
        f"goal {verdict}: served NDCG@10 {g['served_ndcg@10']:.4f} vs {LABELS[g['target']]} "
        f"{g['target_ndcg@10']:.4f}, gap {g['gap']:+.4f}{pct}"
    )


def protocol_table(protocol: str, res: dict[str, Any]) -> str:
    head = ["model", "HR@10", "NDCG@10", "recall@10", "cov@10", "params"]
    rows = protocol_rows(protocol, res)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    r0 = res["runs"][0]
    lines = [
        f"== {protocol}: {DESCRIPTIONS[protocol]}",
        f"   {r0['train_rows']} train rows, {r0['test_users']} test users "
        f"({r0['evaluated_users']} evaluated), {len(res['runs'])} run(s)",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
    ]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(_goal_text(res["goal"]))
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Served ranking quality against tuned peers (`make quality`)",
        "",
        f"Generated {results['date']} by `{results['command']}` "
        f"({results['dataset']['source']}: {results['dataset']['users']} users, "
        f"{results['dataset']['items']} items, {results['dataset']['interactions']} interactions; "
        f"{results['runtime_s']:.0f} s on this machine). Raw numbers: `{results['json']}`.",
        "",
        "recgen is measured **as served**: the train part of each split goes through `recgen export "
        "--no-llm --no-encoder` (its own tuning, on a validation split carved from the train part), "
        "the version is served by `recgen serve --workers 1`, and each test user's top 10 is fetched "
        "with `Recommend(user_id, k=10)` over gRPC (no request context). The peers are fitted on the "
        "same train part in the same run. Train items are excluded for every model (the server "
        "excludes everything a known user interacted with).",
        "",
    ]
    for protocol, res in results["protocols"].items():
        lines += [f"## {protocol}", "", DESCRIPTIONS[protocol] + ".", ""]
        r0 = res["runs"][0]
        lines.append(
            f"{r0['train_rows']} train interactions, {r0['test_users']} test users "
            f"({r0['evaluated_users']} evaluated), {len(res['runs'])} run(s)."
        )
        lines += [
            "",
            "| model | HR@10 | NDCG@10 | recall@10 | coverage@10 | chosen params |",
            "|---|---|---|---|---|---|",
        ]
        for row in protocol_rows(protocol, res):
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", f"**{_goal_text(res['goal'])}**", ""]
        if "goal_previous_grid" in res:
            lines += [f"With the export's previous tuning grid: {_goal_text(res['goal_previous_grid'])}.", ""]
    lines += [
        "## Definitions and notes",
        "",
        "- k = 10, binary relevance, averaged over test users. HR@10: a test item is in the list. "
        "NDCG@10: Σ 1/log2(rank+1) over listed test items, divided by the ideal DCG of "
        "min(|test items|, 10) hits. recall@10: hits / min(|test items|, 10) (so it reaches 1 for a "
        "perfect list even when a user has more than 10 test items). coverage@10: distinct items in "
        "all lists / catalog size. With one test item (leave-last-one-out) HR@10 = recall@10.",
        "- A test item the user also has in the train part is dropped, and users left without test "
        "items are not test users (ML-100K has no repeated user-item pairs: no effect there).",
        "- **implicit iALS**: `implicit` 0.7.3 CPU `AlternatingLeastSquares` (conjugate gradient, "
        f"{IALS_ITERATIONS} iterations, binary input), BLAS pinned to 1 thread, 2 own threads. Grid "
        "factors {32, 64, 128} × regularization {0.01, 0.05, 0.1, 0.5, 1} × alpha {1, 2, 5, 10, 20} "
        f"(all 75 configs; `--quick`: {IALS_QUICK_CONFIGS} drawn at random), chosen by NDCG@10 on a "
        "validation split carved from the train part the same way as the protocol (leave-last-one-out "
        "of the train part; another random 80/20 of it; its newest 20 %), then refitted on the whole "
        "train part. Scores: its trained user factors · item factors.",
        "- **EASE**: λ in {50, 100, 200, 500, 1000}, chosen the same way, refitted on the train part.",
        "- **popularity**: train interaction counts.",
        "- **recgen, served**: what `recgen export` chose by itself (it tunes on leave-last-one-out of "
        "its input, whatever the protocol: it cannot know the protocol). The served user vector is "
        "fold-in of the user's version-held history (newest 200 events, 90-day half-life decay "
        "counted from the user's newest event).",
        "- **recgen version, offline fold-in** (diagnostic, not a goal): the same version's item "
        "factors, fold-in of all train interactions with weight 1 and no decay (the export's own "
        "evaluation). The difference to the served row is what serving-time history handling does.",
        "- Goal: served NDCG@10 ≥ tuned iALS on every protocol, and ≥ EASE where EASE beats iALS "
        "(random 80/20: means over seeds).",
        "- **recgen, served, previous tuning grid** (with `--compare-grid`): the same train part "
        "exported once more with the export's tuning grid before this measurement "
        f"(factors, λ, α: {', '.join(str(g) for g in PREVIOUS_GRID)}), served and fetched the same way: "
        "the before/after of the tuning change in one run.",
    ]
    return "\n".join(lines) + "\n"


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.quality", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_quality_arguments(p)


def run(args: argparse.Namespace, command: str | None = None) -> int:
    """The whole measurement; `command`: how it was invoked (for the report)."""
    t0 = time.perf_counter()
    protocols = tuple(s for s in args.protocols.split(",") if s)
    bad = [s for s in protocols if s not in PROTOCOLS]
    if bad:
        print(f"python -m tools.quality: unknown protocol {bad}; known: {', '.join(PROTOCOLS)}")
        return 2
    cfg = Config(
        quick=args.quick,
        seeds=RANDOM_SEEDS[:1] if args.quick else RANDOM_SEEDS,
        max_users=args.max_users if args.max_users is not None else (300 if args.quick else None),
        protocols=protocols,
        compare_grid=bool(getattr(args, "compare_grid", False)),
    )
    data = load_data(args.interactions, args.items, args.wheels)
    LOG.info(
        "%s: %d users, %d items, %d interactions", data.source, data.n_users, data.n_items, data.user.size
    )
    if args.keep:
        workdir = Path(args.keep)
        workdir.mkdir(parents=True, exist_ok=True)
        protocols_out = evaluate(data, cfg, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="recgen-quality-") as tmp:
            protocols_out = evaluate(data, cfg, Path(tmp))
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command or shlex.join(["recgen", *sys.argv[1:]]),
        "json": display_path(Path(args.out)),
        "dataset": {
            "source": data.source,
            "users": data.n_users,
            "items": data.n_items,
            "interactions": int(data.user.size),
        },
        "config": {
            "quick": cfg.quick,
            "random_seeds": list(cfg.seeds),
            "max_users": cfg.max_users,
            "k": K,
            "workers": cfg.workers,
            "concurrency": cfg.concurrency,
            "ials_grid": {
                "factors": list(IALS_FACTORS),
                "regularization": list(IALS_REGS),
                "alpha": list(IALS_ALPHAS),
                "iterations": IALS_ITERATIONS,
                "configs": IALS_QUICK_CONFIGS
                if cfg.quick
                else len(IALS_FACTORS) * len(IALS_REGS) * len(IALS_ALPHAS),
            },
            "ease_lambdas": list(EASE_LAMBDAS),
        },
        "protocols": {p: {"description": DESCRIPTIONS[p], **r} for p, r in protocols_out.items()},
        "goal_met_everywhere": all(r["goal"]["met"] for r in protocols_out.values()),
        "runtime_s": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(results))
    print()
    for p, r in protocols_out.items():
        print(f"{p}: {_goal_text(r['goal'])}")
    print(f"wrote {out}" + (f" and {args.md}" if args.md else "") + f" ({results['runtime_s']:.0f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(build_parser().parse_args(argv), shlex.join(["python", "-m", "tools.quality", *argv]))


if __name__ == "__main__":
    sys.exit(main())
