"""Recommend and SendFeedback calls as the chaos scenarios send them, each one's outcome kept.

Unlike tools.loadtest, which summarises a run, this keeps every request's times and status, so
a scenario can cut the run into windows (before the fault, while recovering, after the drop).
The schedule itself is tools.harness.load's.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import grpc

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness import load


@dataclass
class Outcome:
    kind: str  # recommend | explain
    t0: float  # scheduled send time (perf_counter)
    t1: float  # when the answer (or the error) came
    code: str  # gRPC status code name
    text_status: str = ""  # explain: pb.TextStatus name

    @property
    def latency(self) -> float:
        return self.t1 - self.t0


async def one_request(
    stub: pbg.RecommenderStub, kind: str, user: str, t0: float | None, timeout: float
) -> Outcome:
    """One Recommend due at t0 (None: now) with a deadline of `timeout` from t0."""
    t0 = time.perf_counter() if t0 is None else t0
    remaining = timeout - (time.perf_counter() - t0)
    if remaining <= 0:
        return Outcome(kind, t0, time.perf_counter(), "DEADLINE_EXCEEDED")
    try:
        r = await stub.Recommend(
            pb.RecommendRequest(user_id=user, k=10, explain=kind == "explain"), timeout=remaining
        )
        status = pb.TextStatus.Name(r.text_status) if kind == "explain" else ""
        return Outcome(kind, t0, time.perf_counter(), "OK", status)
    except grpc.aio.AioRpcError as e:
        return Outcome(kind, t0, time.perf_counter(), e.code().name)


async def open_loop(
    target: str,
    rate: float,
    *,
    explain_share: float,
    timeout: float,
    text_timeout: float,
    users: int,
    max_s: float,
    stop: asyncio.Event | None = None,
    seed: int = 0,
) -> list[Outcome]:
    """Recommend requests due on a fixed schedule until `stop` is set or `max_s` passes.

    Latency counts from each request's scheduled time (no coordinated omission);
    outstanding requests are bounded by their deadline, not by this client.
    """
    rng = random.Random(seed)
    chans = load.channels(target, 4)
    stubs = [pbg.RecommenderStub(c) for c in chans]
    outcomes: list[Outcome] = []

    async def send(stub: pbg.RecommenderStub, t_i: float) -> None:
        kind = "explain" if rng.random() < explain_share else "recommend"
        user = f"chaos-user-{rng.randrange(users)}"
        deadline = text_timeout if kind == "explain" else timeout
        outcomes.append(await one_request(stub, kind, user, t_i, deadline))

    try:
        await load.open_loop(send, stubs, rate, limit=int(rate * max_s), stop=stop, slack=0.0)
        return outcomes
    finally:
        await asyncio.gather(*(c.close() for c in chans))


async def seed_histories(target: str, users: int, per_user: int = 3) -> None:
    """Give the first `users` load users a few clicks, so their answers run fold-in and FAISS."""
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pbg.RecommenderStub(ch)
        rng = random.Random(1)
        await asyncio.gather(
            *(
                stub.SendFeedback(
                    pb.SendFeedbackRequest(
                        event_id=f"seed-{u}-{j}",
                        user_id=f"chaos-user-{u}",
                        item_id=str(rng.randint(1, 400)),
                        type=pb.FEEDBACK_TYPE_CLICK,
                    ),
                    timeout=10,
                )
                for u in range(users)
                for j in range(per_user)
            )
        )


async def probe(stub: pbg.RecommenderStub, n: int, gap: float, explain: bool = False) -> list[Outcome]:
    out = []
    for i in range(n):
        out.append(
            await one_request(stub, "explain" if explain else "recommend", f"probe-{i % 5}", None, 30.0)
        )
        await asyncio.sleep(gap)
    return out
