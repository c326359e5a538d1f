"""The soak's mixed load: each kind of call on its own fixed-rate (open-loop) schedule, every
call's outcome kept.

    mix = Mix(recommend=8.0, explain=0.1, stream=0.1, feedback=4.0, upsert=0.1)   # calls per second
    traffic = Traffic(target, mix, items=[...], known_users=[...])
    await traffic.run(stop)            # until stop is set; then traffic.outcomes

Calls are timed from their scheduled time (tools.harness.load), so a stall shows as latency
instead of politely slowing the load down. The working set is bounded on purpose: a fixed pool
of users and of upserted item ids (upserts cycle over it, so after one pass they are updates),
so that growth in the server's memory is a leak and not more data. It does not judge anything.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness import load

KINDS = ("recommend", "explain", "stream", "feedback", "upsert")
DEADLINE_S = {"recommend": 5.0, "feedback": 5.0, "upsert": 30.0, "explain": 60.0, "stream": 60.0}
FEEDBACK_USERS = 200  # users whose histories the feedback grows (the history cap bounds each)
UPSERT_IDS = 40  # catalog ids the upserts cycle over
FEEDBACK_TYPES = (pb.FEEDBACK_TYPE_CLICK, pb.FEEDBACK_TYPE_VIEW, pb.FEEDBACK_TYPE_RATE)


@dataclass(frozen=True)
class Mix:
    """Calls per second of each kind (0: none)."""

    recommend: float = 8.0
    explain: float = 0.1  # Recommend with explain=True: one LLM text
    stream: float = 0.1  # StreamRecommend with explain=True: items, text pieces, final
    feedback: float = 4.0
    upsert: float = 0.1  # UpsertItems of 2 items

    def rates(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v > 0}


@dataclass
class Outcome:
    kind: str
    t: float  # when it was due, seconds since the traffic started
    latency_s: float
    code: str  # gRPC status code name
    model_version: str = ""  # Recommend / stream answers: which version answered

    def row(self) -> list[Any]:
        return [self.kind, round(self.t, 3), round(self.latency_s, 5), self.code, self.model_version]


class Traffic:
    def __init__(
        self,
        target: str,
        mix: Mix,
        *,
        items: Sequence[str],
        known_users: Sequence[str],
        run_id: str,
        seed: int = 0,
        t0: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        assert items, "the catalog has no items to send feedback about"
        self.target, self.mix, self.items, self.run_id = target, mix, list(items), run_id
        self.known_users = list(known_users) or ["soak-known-0"]
        self.rng = random.Random(seed)
        self.clock = clock
        self.t0 = clock() if t0 is None else t0  # outcome times count from here
        self.outcomes: list[Outcome] = []
        self._seq = itertools.count()

    def _user(self) -> str:
        """Half known users (history from the export), half users the feedback writes for."""
        if self.rng.random() < 0.5:
            return self.rng.choice(self.known_users)
        return f"soak-u{self.rng.randrange(FEEDBACK_USERS)}"

    async def _call(self, kind: str, stub: pbg.RecommenderStub, t_sched: float) -> None:
        t_start = min(t_sched, self.clock())
        version, code = "", "OK"
        n = next(self._seq)
        try:
            version = await self._send(kind, stub, n, DEADLINE_S[kind])
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        except AssertionError:
            code = "BAD_ANSWER"
        self.outcomes.append(Outcome(kind, t_start - self.t0, self.clock() - t_start, code, version))

    async def _send(self, kind: str, stub: pbg.RecommenderStub, n: int, timeout: float) -> str:
        if kind in ("recommend", "explain"):
            r = await stub.Recommend(
                pb.RecommendRequest(user_id=self._user(), k=10, explain=kind == "explain"), timeout=timeout
            )
            assert len(r.items) > 0, "an answer without items"
            return str(r.model_version)
        if kind == "stream":
            req = pb.StreamRecommendRequest(request=pb.RecommendRequest(user_id=self._user(), explain=True))
            events = [e async for e in stub.StreamRecommend(req, timeout=timeout)]
            assert events and events[-1].HasField("final"), "a stream without its final event"
            return ""
        if kind == "feedback":
            t = self.rng.choice(FEEDBACK_TYPES)
            await stub.SendFeedback(
                pb.SendFeedbackRequest(
                    event_id=f"soak-{self.run_id}-{n}",
                    user_id=f"soak-u{self.rng.randrange(FEEDBACK_USERS)}",
                    item_id=self.rng.choice(self.items),
                    type=t,
                    value=float(self.rng.randint(1, 5)) if t == pb.FEEDBACK_TYPE_RATE else None,
                ),
                timeout=timeout,
            )
            return ""
        if kind == "upsert":
            ids = [f"soak-item-{(2 * n + j) % UPSERT_IDS}" for j in range(2)]
            await stub.UpsertItems(
                pb.UpsertItemsRequest(
                    items=[
                        pb.CatalogItem(
                            item_id=i,
                            title=f"Soak item {i} revision {n}",
                            text="A quiet drama about a long night shift.",
                            categories=["Drama"],
                        )
                        for i in ids
                    ]
                ),
                timeout=timeout,
            )
            return ""
        raise AssertionError(f"unknown kind {kind}")

    async def run(self, seconds: float, stop: asyncio.Event | None = None) -> list[Outcome]:
        """Every kind on its schedule for `seconds` (or until `stop` is set); returns once the
        calls in flight end."""
        rates = self.mix.rates()
        chans = load.channels(self.target, 4)
        stubs = [pbg.RecommenderStub(c) for c in chans]

        def sender(kind: str) -> load.Send:
            async def send(stub: Any, t_sched: float) -> None:
                await self._call(kind, stub, t_sched)

            return send

        try:
            await asyncio.gather(
                *(
                    load.open_loop(sender(k), stubs, rate, seconds=seconds, stop=stop, slack=0.0)
                    for k, rate in rates.items()
                )
            )
        finally:
            await asyncio.gather(*(c.close() for c in chans))
        return self.outcomes
