"""The generation benchmark's users: MovieLens histories, written through SendFeedback, and their prompts.

No measurement here: it prepares what the streams and the baselines run on.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HISTORY_EVENTS = 20  # most recent MovieLens ratings written per bench user


@dataclass(frozen=True)
class BenchUser:
    user_id: str  # the id used against the server ("load-user-N", as tools.loadtest's users)
    source_user: str  # MovieLens user id
    history: tuple[tuple[str, float], ...]  # (item_id, rating) newest first


def movielens_users(wheels_dir: Path, n: int, prefix: str = "load-user-") -> list[BenchUser]:
    """n users, each with the HISTORY_EVENTS most recent ratings of one MovieLens user (in user order)."""
    from export.data import iter_user_histories, load_movielens100k

    ds = load_movielens100k(wheels_dir)
    out = []
    hist_by_user = dict(iter_user_histories(ds))
    order = sorted(hist_by_user)
    for i in range(n):
        u = order[i % len(order)]
        rows = hist_by_user[u][::-1][:HISTORY_EVENTS]  # newest first
        hist = tuple((ds.items[int(ds.item[r])].item_id, float(ds.rating[r])) for r in rows)
        out.append(BenchUser(f"{prefix}{i}", ds.users[u], hist))
    return out


async def seed_users(target: str, users: Sequence[BenchUser], concurrency: int = 16) -> dict[str, Any]:
    """Write every user's history as RATE events (newest one 60 s ago, one minute apart, so the order is
    unambiguous) through the public SendFeedback rpc."""
    import grpc

    from recgen.v1 import recommender_pb2 as pb
    from recgen.v1 import recommender_pb2_grpc as pbg

    now = time.time()
    reqs = [
        pb.SendFeedbackRequest(
            event_id=f"bench-{u.user_id}-{k}",
            user_id=u.user_id,
            item_id=item,
            type=pb.FEEDBACK_TYPE_RATE,
            value=rating,
            timestamp=_rfc3339(now - 60.0 * (k + 1)),
        )
        for u in users
        for k, (item, rating) in enumerate(u.history)
    ]
    t0 = time.perf_counter()
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pbg.RecommenderStub(ch)
        it = iter(reqs)

        async def worker() -> None:
            for r in it:
                try:
                    await stub.SendFeedback(r, timeout=30)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"events": len(reqs), "status": dict(codes), "seconds": round(time.perf_counter() - t0, 2)}


def _rfc3339(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat()


def build_prompts(
    llm_cfg: dict[str, Any], catalog: dict[str, Any], users: Sequence[BenchUser], ranked: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """The prompt the worker builds for each user (worker/explain.py, the served outline): the user's
    3 most recent history items and the top 3 ranked items, in the model's chat format, ending with
    the answer's opening (the primer, returned too). catalog: item id -> recgen.repository.CatalogItem.

    One difference from the worker: the history item the opening links to is chosen by shared
    categories only (the worker also weighs item factors), which changes the words, not the work."""
    from recgen.core.explain_outline import ItemFacts, build_outline, nearest_history
    from recgen.core.prompt import build_prompt

    def facts(item_id: str) -> ItemFacts:
        it = catalog[item_id]
        return ItemFacts(it.title, tuple(it.categories), it.text)

    out = []
    for u in users:
        items = ranked.get(u.user_id)
        if not items:
            continue
        hist = [facts(i) for i, _ in u.history if i in catalog][:3]
        recs = [facts(i) for i in items if i in catalog][:3]
        if not recs:
            continue
        outline = build_outline(hist, recs, liked=nearest_history(None, None, recs[0], hist))
        prompt = build_prompt(llm_cfg, outline.message, outline.primer)
        out.append({"user_id": u.user_id, "prompt": prompt, "primer": outline.primer})
    return out
