"""Replay evaluation: does real-time feedback make the next answer better?

MovieLens-100K is split by time: a model version is trained on the past, the
past events are loaded into a fresh state store, and the future events are
replayed in time order through a real `recgen serve`. Before each future
event three answers are asked for (k=10), all excluding every item the user
has seen so far (past and future-so-far):

- (a) static:   the user's past events only (a shadow user id "static:<id>"
                holding a copy of them), i.e. the model as trained;
- (b) feedback: the real user id, whose state also holds every future event
                replayed so far (sent with SendFeedback, as a client would);
- (c) popularity: a user id without events ("pop:<id>"): the cold-start answer.

Each answer is scored on whether the event's item is in it (HitRate@10,
NDCG@10); the lists give coverage, novelty and intra-list diversity. Results
are split into users known at training time and users new in the future.

    python -m tools.replay_eval [--quick] [--out docs/eval.json] [--plot docs/eval.png]

Loopback only; the gateway is stopped whatever happens. See docs/eval.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from export.data import Dataset

LOG = logging.getLogger(__name__)

K = 10
ARMS = ("static", "feedback", "popularity")
GROUPS = ("known", "known_20plus", "new")
GROUP_LABELS = {"known": "known", "known_20plus": "known, ≥20 past events", "new": "new"}
# ML-100K keeps only users with at least 20 ratings: a known user with 20 past
# events has a full-sized profile, so a lift there is no cold-start effect.
FULL_PROFILE = 20
ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- split


@dataclass(frozen=True)
class Split:
    past: np.ndarray  # row indices of the training period, in time order
    future: np.ndarray  # row indices of the replayed period, in time order
    cut_time: float  # timestamp of the first future event
    known_users: frozenset[int]  # user indices with at least one past event


def time_order(ds: Dataset) -> np.ndarray:
    """Row indices by timestamp; time ties keep file order (stable)."""
    return np.lexsort((np.arange(len(ds)), ds.timestamp))


def time_split(ds: Dataset, future_frac: float) -> Split:
    """Global split: the last `future_frac` of all events by time are the future.

    Global, not per user: every model answer may only use what happened before
    the cut, like a model trained on a given day and served afterwards. Events
    that tie with the cut in time stay on the side their file position puts them.
    """
    if not 0.0 < future_frac < 1.0:
        raise ValueError(f"future_frac must be in (0, 1), got {future_frac}")
    order = time_order(ds)
    cut = len(order) - max(1, round(len(order) * future_frac))
    past, future = order[:cut], order[cut:]
    return Split(past, future, float(ds.timestamp[future[0]]), frozenset(ds.user[past].tolist()))


def past_dataset(ds: Dataset, rows: np.ndarray) -> Dataset:
    """The training data: only `rows`, users re-indexed, the whole item catalog.

    The catalog stays whole so that every future item has a row in the model
    (items first rated in the future keep their untrained factors and rank low,
    as a new catalog item would).
    """
    rows = np.sort(rows)  # file order, as a loader would give it
    names = [ds.users[u] for u in dict.fromkeys(ds.user[rows].tolist())]
    index = {n: i for i, n in enumerate(names)}
    user = np.asarray([index[ds.users[u]] for u in ds.user[rows]], dtype=np.int32)
    fp = hashlib.sha256(f"{ds.fingerprint}:rows:{len(rows)}:{rows[-1]}".encode()).hexdigest()
    return Dataset(
        items=ds.items,
        users=names,
        user=user,
        item=ds.item[rows].copy(),
        rating=ds.rating[rows].copy(),
        timestamp=ds.timestamp[rows].copy(),
        source=f"{ds.source}, training period of a replay split",
        fingerprint=fp,
        report=ds.report,
        has_ratings=ds.has_ratings,
        has_timestamps=ds.has_timestamps,
    )


def sample_future(ds: Dataset, split: Split, max_events: int | None, seed: int) -> np.ndarray:
    """At most `max_events` future rows, whole users only, half the budget per group.

    Whole users: a user's events must be replayed as a sequence, or feedback
    has nothing to build on. Half per group: known users are the minority of
    the future period, and their lift is the question.
    """
    if max_events is None or max_events >= len(split.future):
        return split.future
    rng = np.random.default_rng(seed)
    users = ds.user[split.future]
    keep = np.zeros(len(split.future), dtype=bool)
    for known in (True, False):
        group = sorted({u for u in users.tolist() if (u in split.known_users) == known})
        budget, taken = max_events // 2, 0
        for u in rng.permutation(group):
            mask = users == u
            if taken and taken + int(mask.sum()) > budget:
                continue
            keep |= mask
            taken += int(mask.sum())
            if taken >= budget:
                break
    return split.future[keep]


def user_groups(n_past: int) -> list[str]:
    """The report groups a user's events count in (a known user may be in two)."""
    if n_past == 0:
        return ["new"]
    return ["known", "known_20plus"] if n_past >= FULL_PROFILE else ["known"]


def by_user(ds: Dataset, rows: np.ndarray) -> dict[int, np.ndarray]:
    """Rows grouped per user, each user's rows in the given (time) order."""
    out: dict[int, list[int]] = {}
    for r in rows.tolist():
        out.setdefault(int(ds.user[r]), []).append(r)
    return {u: np.asarray(rs, dtype=np.int64) for u, rs in out.items()}


# --------------------------------------------------------------------------- metrics


def hit_and_ndcg(ranked: Sequence[str], target: str, k: int = K) -> tuple[float, float]:
    """One relevant item: hit = it is in the top k; NDCG = 1/log2(rank + 1) then."""
    top = list(ranked[:k])
    if target not in top:
        return 0.0, 0.0
    return 1.0, 1.0 / math.log2(top.index(target) + 2)


def novelty(rows: np.ndarray, share: np.ndarray) -> float:
    """Mean self-information -log2(share) of the recommended items."""
    return float(-np.log2(share[rows]).mean()) if rows.size else 0.0


def intra_list_diversity(rows: np.ndarray, unit_factors: np.ndarray) -> float:
    """Mean pairwise (1 - cosine) of the list's item factors; 0 for < 2 items."""
    if rows.size < 2:
        return 0.0
    v = unit_factors[rows]
    sim = v @ v.T
    n = rows.size
    return float((n * (n - 1) - (sim.sum() - np.trace(sim))) / (n * (n - 1)))


def unit_rows(factors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    return factors / np.where(norms > 0, norms, 1.0)


def popularity_share(counts: np.ndarray, n_users: int) -> np.ndarray:
    """Fraction of training users who rated each item; items never rated count
    as rated once, so that their novelty is high but finite."""
    return np.maximum(counts.astype(np.float64), 1.0) / max(n_users, 1)


@dataclass
class ArmStats:
    """Per-event scores and per-list statistics of one arm in one user group."""

    hits: list[float] = field(default_factory=list)
    ndcgs: list[float] = field(default_factory=list)
    users: list[int] = field(default_factory=list)  # the user of each event, for the bootstrap
    novelty: list[float] = field(default_factory=list)
    diversity: list[float] = field(default_factory=list)
    recommended: set[int] = field(default_factory=set)
    short_lists: int = 0  # answers with fewer than K items

    def add(self, user: int, ranked_rows: np.ndarray, hit: float, ndcg: float, ctx: MetricContext) -> None:
        self.hits.append(hit)
        self.ndcgs.append(ndcg)
        self.users.append(user)
        self.novelty.append(novelty(ranked_rows, ctx.share))
        self.diversity.append(intra_list_diversity(ranked_rows, ctx.unit_factors))
        self.recommended.update(ranked_rows.tolist())
        self.short_lists += int(ranked_rows.size < K)

    def summary(self, n_items: int) -> dict[str, float | int]:
        n = len(self.hits)
        return {
            "events": n,
            "users": len(set(self.users)),
            "hit_rate@10": float(np.mean(self.hits)) if n else 0.0,
            "ndcg@10": float(np.mean(self.ndcgs)) if n else 0.0,
            "coverage@10": len(self.recommended) / n_items,
            "novelty": float(np.mean(self.novelty)) if n else 0.0,
            "intra_list_diversity": float(np.mean(self.diversity)) if n else 0.0,
            "short_lists": self.short_lists,
        }


@dataclass(frozen=True)
class MetricContext:
    item_row: dict[str, int]
    share: np.ndarray  # (n_items,) popularity share in the training period
    unit_factors: np.ndarray  # (n_items, d) item factors scaled to unit length


def lift(b: float, a: float) -> float | None:
    return None if a == 0 else b / a - 1.0


def bootstrap_lift(
    users: Sequence[int], b: Sequence[float], a: Sequence[float], n_boot: int = 1000, seed: int = 0
) -> tuple[float, float] | None:
    """95 % interval of the lift mean(b)/mean(a) - 1, resampling whole users.

    Users, not events, are the independent units: one user's events are a
    sequence and share the user's taste, so resampling events would make the
    interval too narrow.
    """
    if not users:
        return None
    uids, inv = np.unique(np.asarray(users), return_inverse=True)
    sum_b = np.bincount(inv, weights=np.asarray(b, dtype=np.float64), minlength=uids.size)
    sum_a = np.bincount(inv, weights=np.asarray(a, dtype=np.float64), minlength=uids.size)
    draw = np.random.default_rng(seed).integers(0, uids.size, size=(n_boot, uids.size))
    tot_b, tot_a = sum_b[draw].sum(axis=1), sum_a[draw].sum(axis=1)
    ok = tot_a > 0
    if not ok.any():
        return None
    lifts = tot_b[ok] / tot_a[ok] - 1.0
    return float(np.percentile(lifts, 2.5)), float(np.percentile(lifts, 97.5))


# --------------------------------------------------------------------------- state


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def past_events(ds: Dataset, rows: np.ndarray, prefix: str = "") -> list[Any]:
    """The past as RATE events (value = rating, ts = event time) of `prefix + user`."""
    from server.state import Event

    tag = prefix or "real:"
    return [
        Event(
            event_id=f"past:{tag}{r}",
            user_id=prefix + ds.users[ds.user[r]],
            item_id=ds.items[ds.item[r]].item_id,
            type="RATE",
            value=float(ds.rating[r]),
            ts=float(ds.timestamp[r]),
        )
        for r in rows.tolist()
    ]


def load_state(path: Path, ds: Dataset, past: np.ndarray) -> int:
    """A fresh state DB with each past event twice: under the real user id (arm b
    builds on it) and under "static:<id>" (arm a, which never gets feedback)."""
    from server.state import StateStore

    store = StateStore(path, synchronous="NORMAL")  # a throwaway DB: no need to fsync
    try:
        return store.add_events_bulk_sync(past_events(ds, past) + past_events(ds, past, "static:"))
    finally:
        store.close()


# --------------------------------------------------------------------------- replay


@dataclass
class Replay:
    """Everything the replay of one user needs; shared by all users."""

    stub: Any  # recgen.v1 RecommenderStub on a grpc.aio channel
    ds: Dataset
    ctx: MetricContext
    stats: dict[tuple[str, str], ArmStats]  # (group, arm) -> stats
    timeout: float = 30.0
    done: int = 0


async def recommend(r: Replay, user_id: str, when: str, exclude: list[str]) -> list[str]:
    from recgen.v1 import recommender_pb2 as pb

    req = pb.RecommendRequest(
        user_id=user_id, k=K, context=pb.Context(local_time=when), exclude_item_ids=exclude
    )
    resp = await r.stub.Recommend(req, timeout=r.timeout)
    return [it.item_id for it in resp.items]


async def send_rating(r: Replay, row: int, when: str) -> None:
    from recgen.v1 import recommender_pb2 as pb

    ds = r.ds
    await r.stub.SendFeedback(
        pb.SendFeedbackRequest(
            event_id=f"replay:{row}",
            user_id=ds.users[ds.user[row]],
            item_id=ds.items[ds.item[row]].item_id,
            type=pb.FEEDBACK_TYPE_RATE,
            value=float(ds.rating[row]),
            timestamp=when,
        ),
        timeout=r.timeout,
    )


async def replay_user(r: Replay, user: int, rows: np.ndarray, seen: list[str], groups: list[str]) -> None:
    """One user's future events strictly in order: ask the three arms, score,
    then send the event as feedback so that arm (b)'s next answer has it."""
    ds = r.ds
    uid = ds.users[user]
    seen = list(seen)
    for row in rows.tolist():
        when = rfc3339(float(ds.timestamp[row]))
        target = ds.items[ds.item[row]].item_id
        # The same exclusion in every arm: the server only knows the seen items of
        # the real id (and only the newest HISTORY_CAP of them), so pass them all.
        lists = await asyncio.gather(
            recommend(r, "static:" + uid, when, seen),
            recommend(r, uid, when, seen),
            recommend(r, "pop:" + uid, when, seen),
        )
        for arm, ranked in zip(ARMS, lists, strict=True):
            hit, ndcg = hit_and_ndcg(ranked, target)
            ranked_rows = np.asarray([r.ctx.item_row[i] for i in ranked], dtype=np.int64)
            for group in groups:
                r.stats[(group, arm)].add(user, ranked_rows, hit, ndcg, r.ctx)
        await send_rating(r, row, when)
        seen.append(target)
        r.done += 1


async def run_replay(
    target: str,
    ds: Dataset,
    split: Split,
    future: np.ndarray,
    ctx: MetricContext,
    concurrency: int,
) -> dict[tuple[str, str], ArmStats]:
    """All sampled users, `concurrency` at a time. Users are independent in the
    server (fold-in per user, item factors fixed), so replaying users side by
    side gives the same answers as one global time-ordered stream, as long as
    each user's own events stay in order and carry their own time."""
    import grpc

    from recgen.v1 import recommender_pb2_grpc as pbg

    stats = {(g, a): ArmStats() for g in GROUPS for a in ARMS}
    seen = {u: [ds.items[ds.item[r]].item_id for r in rs] for u, rs in by_user(ds, split.past).items()}
    users = by_user(ds, future)
    sem = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(target) as channel:
        r = Replay(pbg.RecommenderStub(channel), ds, ctx, stats)

        async def one(u: int, rows: np.ndarray) -> None:
            async with sem:
                past = seen.get(u, [])
                await replay_user(r, u, rows, past, user_groups(len(past)))

        progress = asyncio.create_task(report_progress(r, len(future)))
        try:
            await asyncio.gather(*(one(u, rs) for u, rs in users.items()))
        finally:
            progress.cancel()
    return stats


async def report_progress(r: Replay, total: int, every: float = 15.0) -> None:
    t0 = time.perf_counter()
    while True:
        await asyncio.sleep(every)
        rate = r.done / (time.perf_counter() - t0)
        LOG.info("replayed %d / %d events (%.0f events/s)", r.done, total, rate)


# --------------------------------------------------------------------------- report


def users_better(users: Sequence[int], b: Sequence[float], a: Sequence[float]) -> dict[str, int]:
    """How many users got more (fewer, as many) hits with feedback than without:
    a count no heavy user can dominate, unlike the per-event mean."""
    uids, inv = np.unique(np.asarray(users, dtype=np.int64), return_inverse=True)
    diff = np.bincount(inv, weights=np.asarray(b) - np.asarray(a), minlength=uids.size)
    return {"better": int((diff > 0).sum()), "worse": int((diff < 0).sum()), "same": int((diff == 0).sum())}


def summarize(stats: dict[tuple[str, str], ArmStats], n_items: int, n_boot: int = 1000) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for g in GROUPS:
        arms = {a: stats[(g, a)].summary(n_items) for a in ARMS}
        a, b = stats[(g, "static")], stats[(g, "feedback")]
        lifts: dict[str, Any] = {}
        for metric, attr in (("hit_rate@10", "hits"), ("ndcg@10", "ndcgs")):
            ci = bootstrap_lift(b.users, getattr(b, attr), getattr(a, attr), n_boot)
            lifts[metric] = {
                "lift": lift(arms["feedback"][metric], arms["static"][metric]),
                "ci95": None if ci is None else list(ci),
            }
        lifts["users_by_hits"] = users_better(b.users, b.hits, a.hits)
        out[g] = {"arms": arms, "lift_feedback_over_static": lifts}
    return out


def fmt_lift(entry: dict[str, Any]) -> str:
    if entry["lift"] is None:
        return "n/a"
    ci = entry["ci95"]
    ci_text = "" if ci is None else f" [{ci[0]:+.1%}, {ci[1]:+.1%}]"
    return f"{entry['lift']:+.1%}{ci_text}"


def table(results: dict[str, Any]) -> str:
    """A Markdown table: one row per group and arm, then the lifts."""
    lines = [
        "| group | arm | users | events | HR@10 | NDCG@10 | coverage@10 | novelty | ILD |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in GROUPS:
        for a in ARMS:
            s = results[g]["arms"][a]
            lines.append(
                f"| {GROUP_LABELS[g]} | {a} | {s['users']} | {s['events']} | {s['hit_rate@10']:.4f} | "
                f"{s['ndcg@10']:.4f} | {s['coverage@10']:.3f} | {s['novelty']:.2f} | "
                f"{s['intra_list_diversity']:.3f} |"
            )
    lines += [
        "",
        "| group | lift (b)/(a) − 1: HR@10 [95 % CI] | NDCG@10 [95 % CI] | users: more / fewer / same hits |",
        "|---|---|---|---|",
    ]
    for g in GROUPS:
        lf = results[g]["lift_feedback_over_static"]
        u = lf["users_by_hits"]
        lines.append(
            f"| {GROUP_LABELS[g]} | {fmt_lift(lf['hit_rate@10'])} | {fmt_lift(lf['ndcg@10'])} | "
            f"{u['better']} / {u['worse']} / {u['same']} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here; must precede pyplot
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(GROUPS), figsize=(4.5 * len(GROUPS), 4.2), sharey=True)
    width = 0.27
    for ax, g in zip(axes, GROUPS, strict=True):
        x = np.arange(2)
        for i, a in enumerate(ARMS):
            s = results[g]["arms"][a]
            vals = [s["hit_rate@10"], s["ndcg@10"]]
            bars = ax.bar(x + (i - 1) * width, vals, width, label=a)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        n = results[g]["arms"]["feedback"]
        ax.set_xticks(x, ["HitRate@10", "NDCG@10"])
        ax.set_title(f"{GROUP_LABELS[g]}\n({n['users']} users, {n['events']} events)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("per replayed event")
    axes[0].legend()
    fig.suptitle("MovieLens-100K replay: static model vs real-time feedback vs popularity")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


@dataclass
class EvalConfig:
    future_frac: float = 0.1
    max_events: int | None = None
    concurrency: int = 8
    workers: int = 2
    seed: int = 0
    factors: int | None = None  # None: tuned on the past, as `recgen export` does
    iterations: int = 15
    bootstrap: int = 1000
    wheels_dir: Path = ROOT / ".cache" / "wheels"


def display_path(path: Path) -> str:
    """Relative to the repository when inside it: the JSON is committed, and a
    home directory in it would say nothing to a reader."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def build_model(past: Dataset, root: Path, cfg: EvalConfig) -> Path:
    from export.options import ExportOptions
    from export.pipeline import export_version

    opts = ExportOptions(
        with_llm=False,  # ranking only: the text plays no part in these metrics
        with_encoder=False,
        factors=cfg.factors,
        iterations=cfg.iterations,
        seed=cfg.seed,
        progress=False,
        evaluate_ease=False,
        wheels_dir=cfg.wheels_dir,
    )
    return export_version(past, root, opts)


def metric_context(version: Path, n_train_users: int) -> MetricContext:
    from recgen.repository import ModelVersion

    catalog = ModelVersion.load(version).catalog()
    return MetricContext(
        item_row={it.item_id: i for i, it in enumerate(catalog)},
        share=popularity_share(np.load(version / "item_popularity.npy"), n_train_users),
        unit_factors=unit_rows(np.load(version / "item_factors.npy").astype(np.float64)),
    )


def evaluate(cfg: EvalConfig, workdir: Path) -> dict[str, Any]:
    from export.data import load_movielens100k
    from tests.procs import Gateway

    t0 = time.perf_counter()
    ds = load_movielens100k(cfg.wheels_dir)
    split = time_split(ds, cfg.future_frac)
    future = sample_future(ds, split, cfg.max_events, cfg.seed)
    past = past_dataset(ds, split.past)
    LOG.info(
        "split at %s: %d past events (%d users), %d future events, %d replayed",
        rfc3339(split.cut_time),
        len(split.past),
        past.n_users,
        len(split.future),
        len(future),
    )
    version = build_model(past, workdir / "models", cfg)
    t_model = time.perf_counter()
    loaded = load_state(workdir / "state.db", ds, split.past)
    LOG.info("state: %d past events loaded (real and static ids)", loaded)
    ctx = metric_context(version, past.n_users)
    # No per-user feedback rate limit: a replay sends one user's events back to
    # back, far faster than a person would, and a refused event would be lost.
    args = ("--workers", str(cfg.workers), "--feedback-rate", "0")
    gw = Gateway(workdir / "models", workdir / "state.db", *args).start()
    try:
        t_replay = time.perf_counter()
        stats = asyncio.run(run_replay(gw.target, ds, split, future, ctx, cfg.concurrency))
        t_end = time.perf_counter()
    finally:
        gw.stop()
    manifest = json.loads((version / "manifest.json").read_text())
    return {
        "dataset": ds.source,
        "protocol": {
            "split": f"global by time: last {cfg.future_frac:.0%} of events are the future",
            "cut_time": rfc3339(split.cut_time),
            "past_events": int(len(split.past)),
            "future_events": int(len(split.future)),
            "replayed_events": int(len(future)),
            "k": K,
            "exclusion": "every item the user rated before the event (past and replayed), in every arm",
            "arms": {
                "static": "the user's past events only (no feedback)",
                "feedback": "past events plus every replayed event so far, via SendFeedback (RATE)",
                "popularity": "cold-start answer: training popularity",
            },
            "lift_ci": f"95 % user-level bootstrap ({cfg.bootstrap} resamples)",
        },
        "config": {k: display_path(v) if isinstance(v, Path) else v for k, v in cfg.__dict__.items()},
        "model": {"version": manifest["version"], "mf": manifest["params"]["mf"]},
        "results": summarize(stats, ds.n_items, cfg.bootstrap),
        "runtime_s": {
            "model": round(t_model - t0, 1),
            "replay": round(t_end - t_replay, 1),
            "total": round(t_end - t0, 1),
            "events_per_s": round(len(future) / max(t_end - t_replay, 1e-9), 1),
        },
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="replay a sample of 2,000 future events")
    p.add_argument("--max-events", type=int, default=None, help="replay at most this many future events")
    p.add_argument("--future-frac", type=float, default=0.1, help="share of events (by time) replayed")
    p.add_argument("--concurrency", type=int, default=8, help="users replayed side by side")
    p.add_argument("--workers", type=int, default=2, help="recgen serve --workers")
    p.add_argument("--factors", type=int, default=None, help="fix the MF factors (default: tuned)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wheels", type=Path, default=ROOT / ".cache" / "wheels")
    p.add_argument("--workdir", type=Path, default=None, help="keep models and state here (default: temp)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    p.add_argument("--plot", type=Path, default=None, help="write a bar chart (PNG)")
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    max_events = args.max_events if args.max_events is not None else (2000 if args.quick else None)
    return EvalConfig(
        future_frac=args.future_frac,
        max_events=max_events,
        concurrency=args.concurrency,
        workers=args.workers,
        seed=args.seed,
        factors=args.factors,
        wheels_dir=args.wheels,
    )


def main(argv: Iterable[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = build_parser().parse_args(None if argv is None else list(argv))
    cfg = config_from_args(args)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="recgen-eval-")
    elif args.workdir.exists() and any(args.workdir.iterdir()):
        # A state DB from an earlier run already holds the future: arm (b) would see it.
        raise SystemExit(f"--workdir {args.workdir} is not empty")
    workdir = Path(tmp or args.workdir)
    try:
        report = evaluate(cfg, workdir)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(table(report["results"]))
    print(f"runtime: {json.dumps(report['runtime_s'])}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(report["results"], args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
