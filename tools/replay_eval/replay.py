"""The future replayed through a running `recgen serve`: three answers per event, then feedback.

Asks and scores; starting the server and reporting happen elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.data import Dataset
from tools.replay_eval.metrics import ArmStats, K, MetricContext, hit_and_ndcg
from tools.replay_eval.split import GROUPS, Split, by_user, user_groups
from tools.replay_eval.state import rfc3339

LOG = logging.getLogger(__name__)

ARMS = ("static", "feedback", "popularity")


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
