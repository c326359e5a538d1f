"""The gateway's calls to the workers: pick a worker, ask it, retry, keep the deadline.

`rank` asks the least-loaded worker (retrying on another one if the first is
unreachable: ranking is side-effect free), or with a sharded catalog one
worker of every shard, merged (server/shards.py); `text` streams the grounded
text from a worker and always ends with one final message. `Prepared` is what
these calls know of a request.

What it does not do: validate requests, read or write user state, or build
the public replies (server/service.py); choose among workers
(server/workers.py) or coalesce Rank calls (server/rank_batch.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from recgen import tracing
from recgen.worker.v1 import worker_pb2 as wpb
from server.catalog import CatalogSync
from server.rank_batch import RankBatcher, rank_alone
from server.ranked import Ranked
from server.shards import ShardMismatch, merge_rank, merge_similar
from server.validation import Recommendation
from server.workers import NoWorkerAvailable, WorkerPool

LOG = logging.getLogger(__name__)

TEXT_MARGIN_S = 0.05  # stop the text this long before the caller's deadline, to answer in time
RANK_ATTEMPTS = 2


@dataclass
class Prepared:
    req: Recommendation
    request_id: str
    history: list[tuple[str, float, float]]  # (item_id, weight before decay, time) newest first
    exclude: list[str]
    dismissed: list[str]
    deadline: float | None  # monotonic
    seen: list[str] = field(default_factory=list)  # consumed items older than `history`
    forgotten_at: float = 0.0  # the user's ForgetUser tombstone (0: none)

    @property
    def history_item_ids(self) -> list[str]:
        return list(dict.fromkeys(i for i, _, _ in self.history))


class WorkerCalls:
    """The worker pool seen from one gateway: every call a request makes to a worker."""

    def __init__(
        self,
        pool: WorkerPool,
        *,
        rank_batcher: RankBatcher | None = None,
        live_catalog: CatalogSync | None = None,
    ) -> None:
        self.pool = pool
        self.rank_batcher = rank_batcher  # None: one Rank RPC per request
        self.live_catalog = live_catalog

    def timeout(self, deadline: float | None, margin: float = 0.0) -> float | None:
        return None if deadline is None else max(0.001, deadline - time.monotonic() - margin)

    async def call_worker(
        self, method: str, msg: object, deadline: float | None, shard: int | None = None
    ) -> Any:
        """A unary worker call on the least-loaded worker; retried once on another
        worker if the first is unreachable (these calls have no side effects)."""
        tried: set[str] = set()
        for attempt in range(RANK_ATTEMPTS):
            w = self.pool.pick(avoid=tried, shard=shard)
            w.in_flight += 1
            try:
                assert w.stub is not None
                with tracing.span(
                    "gateway.worker_call", kind=tracing.SpanKind.CLIENT, method=method, worker=w.name,
                    attempt=attempt, shard=-1 if shard is None else shard,
                ):  # fmt: skip
                    if method == "Rank":  # a packed row (server/rank_batch.py)
                        if tracing.enabled():  # the worker's spans hang under this attempt
                            msg.traceparent = tracing.current_traceparent()  # type: ignore[attr-defined]
                        if self.rank_batcher is not None:
                            return await self.rank_batcher.rank(w, msg, self.timeout(deadline))  # type: ignore[arg-type]
                        return await rank_alone(w, msg, self.timeout(deadline))  # type: ignore[arg-type]
                    return await getattr(w.stub, method)(msg, timeout=self.timeout(deadline))
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == RANK_ATTEMPTS:
                    raise
                self.pool.mark_failed(w)
                tried.add(w.name)
                LOG.warning("%s on %s failed (%s): retrying elsewhere", method, w.name, e.details())
            finally:
                w.in_flight -= 1
        raise NoWorkerAvailable(f"no worker could answer {method}")  # pragma: no cover

    async def ask(self, method: str, msg: Any, deadline: float | None) -> Any:
        """Rank or Similar: one worker's answer, or with a sharded catalog one worker of every
        shard asked in parallel and their answers merged into the one-index answer
        (server/shards.py). No shard may be missing: a partial answer would drop its items
        silently, so a shard without a healthy worker is UNAVAILABLE, named."""
        n = self.pool.shards
        if n <= 1:
            return await self.call_worker(method, msg, deadline)
        merge = merge_rank if method == "Rank" else merge_similar

        async def merged() -> Any:
            answers = await asyncio.gather(*(self.call_worker(method, msg, deadline, s) for s in range(n)))
            return merge(answers, msg.k)

        try:
            return await merged()
        except ShardMismatch:  # a hot swap reached some shards first: ask once more
            try:
                return await merged()
            except ShardMismatch as e:
                raise NoWorkerAvailable(str(e)) from e

    async def rank(self, p: Prepared) -> Ranked:
        msg = self._row(p)
        ranked: Ranked = await self.ask("Rank", msg, p.deadline)
        live = self.live_catalog
        if live is not None and ranked.catalog_seq < live.seq:
            # A worker behind the catalog log (restarted behind our back) would miss
            # upserts and deletes: bring it up, then ask again.
            await live.resync_after(ranked.catalog_seq)
            ranked = await self.ask("Rank", msg, p.deadline)
        return ranked

    async def rank_many(self, ps: list[Prepared], deadline: float | None) -> list[Ranked | BaseException]:
        """A RecommendBatch's users: their rows spread over the healthy workers' batcher lanes at
        once (futures, no task per user); a row whose worker was unreachable or behind the
        catalog log is asked again alone, as `rank` would. Sharded catalogs and gateways without
        the batcher rank each user with `rank`."""
        batcher = self.rank_batcher
        live_workers = [w for w in self.pool.workers if w.healthy and w.stub is not None]
        if self.pool.shards > 1 or batcher is None or not live_workers:
            return list(await asyncio.gather(*(self.rank(p) for p in ps), return_exceptions=True))
        rows = [self._row(p) for p in ps]
        per = -(-len(rows) // len(live_workers))  # ceil: one contiguous chunk per worker
        futures: list[asyncio.Future[Ranked]] = []
        used = []
        for i, w in enumerate(live_workers):
            chunk = rows[i * per : (i + 1) * per]
            if chunk:
                w.in_flight += len(chunk)
                used.append((w, len(chunk)))
                futures += batcher.enqueue(w, chunk, self.timeout(deadline))
        try:
            outs: list[Ranked | BaseException] = list(await asyncio.gather(*futures, return_exceptions=True))
        finally:
            for w, n in used:
                w.in_flight -= n
        live = self.live_catalog
        again = [
            i
            for i, o in enumerate(outs)
            if (isinstance(o, grpc.aio.AioRpcError) and o.code() == grpc.StatusCode.UNAVAILABLE)
            or (isinstance(o, Ranked) and live is not None and o.catalog_seq < live.seq)
        ]
        if again:
            redo = await asyncio.gather(*(self.rank(ps[i]) for i in again), return_exceptions=True)
            for i, o in zip(again, redo, strict=True):
                outs[i] = o
        return outs

    def _row(self, p: Prepared) -> wpb.RankRow:
        """The request as one packed row of a RankRows batch."""
        c = p.req.context
        h = p.history
        return wpb.RankRow(
            history_item_ids=[e[0] for e in h],
            history_weights=[e[1] for e in h],
            history_timestamps=[e[2] for e in h],
            exclude_item_ids=p.exclude,
            k=p.req.k,
            context=wpb.RankContext(
                hour=c.hour, weekday=c.weekday, device=c.device, locale=c.locale, intent=c.intent
            ),
            include_categories=p.req.include_categories,
            exclude_categories=p.req.exclude_categories,
            dismissed_item_ids=p.dismissed,
            user_id=p.req.user_id,
            forgotten_at=p.forgotten_at,
            seen_item_ids=p.seen,
            include_seen=p.req.include_seen,
            traceparent=tracing.current_traceparent(),
        )

    async def text(self, p: Prepared, items: list[str]) -> AsyncIterator[wpb.GenerateResponse]:
        """Grounded text pieces, then one final message (always)."""
        msg = wpb.GenerateRequest(
            history_item_ids=p.history_item_ids,
            recommended_item_ids=items,
            intent=p.req.context.intent,
            user_id=p.req.user_id,
            forgotten_at=p.forgotten_at,
            locale=p.req.context.locale,  # the text's language, when the model writes it
        )
        try:
            w = self.pool.pick()
        except NoWorkerAvailable:
            yield wpb.GenerateResponse(finished=True, reason="no worker available for text")
            return
        w.in_flight += 1
        try:
            assert w.stub is not None
            call = w.stub.Generate(msg, timeout=self.timeout(p.deadline, TEXT_MARGIN_S))
            async for piece in call:
                yield piece
                if piece.finished:
                    return
            yield wpb.GenerateResponse(finished=True, reason="text stream ended early")
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                yield wpb.GenerateResponse(
                    finished=True,
                    stop_reason=wpb.STOP_REASON_DEADLINE,
                    reason="deadline reached while writing the text",
                )
            else:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    self.pool.mark_failed(w)
                LOG.warning("text generation failed on %s: %s %s", w.name, e.code(), e.details())
                yield wpb.GenerateResponse(finished=True, reason=f"text unavailable: {e.code().name}")
        finally:
            w.in_flight -= 1
