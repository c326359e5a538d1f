"""The worker's gRPC servicer: protobuf in, model call, protobuf out.

Thin by design (as text-generation-inference's server.py): requests become
plain jobs, go through the batcher (ranking) or the generator (text), and
come back as replies. Errors map to precise status codes here and nowhere
else (`_STATUS`): QueueFull → RESOURCE_EXHAUSTED, DeadlineExpired →
DEADLINE_EXCEEDED, CatalogGap → FAILED_PRECONDITION. The text itself (prompt,
generation, what may be shown) is worker/explain.py's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from recgen.config import WorkerConfig
from recgen.repository import CatalogItem
from recgen.worker.v1 import worker_pb2, worker_pb2_grpc
from worker.batcher import Batcher, DeadlineExpired, QueueFull
from worker.context import JobContext
from worker.explain import (
    SHOW_HISTORY,
    NoItemToPresent,
    NoLanguageModel,
    PromptTooLong,
    TextOptions,
    explain,
    plan_text,
)
from worker.live_catalog import CatalogGap, Change, LiveCatalog
from worker.llm.api import QueueFull as GenerationQueueFull
from worker.llm.api import StopReason
from worker.llm.grounded import TextDone
from worker.metrics import SIZE_BOUNDS, Metrics
from worker.model import LoadedModel
from worker.rank_rows import build_job, item_rows, rank_rows
from worker.rank_socket import RankSocket, batch_deadline
from worker.ranking import RankJob, RankResult

LOG = logging.getLogger(__name__)

MAX_K = 1000
INLINE_ROWS = 16  # RankRows of at most this many rows may be ranked on the event loop

# Every StopReason -> the worker proto's enum, which has no CANCELLED or ERROR:
# a cancelled generation reads as DEADLINE, a failed one as UNSPECIFIED.
_STOP: dict[StopReason, worker_pb2.StopReason] = {
    StopReason.EOS: worker_pb2.STOP_REASON_EOS,
    StopReason.LENGTH: worker_pb2.STOP_REASON_LENGTH,
    StopReason.UNGROUNDED: worker_pb2.STOP_REASON_UNGROUNDED,
    StopReason.DEADLINE: worker_pb2.STOP_REASON_DEADLINE,
    StopReason.CANCELLED: worker_pb2.STOP_REASON_DEADLINE,
    StopReason.ERROR: worker_pb2.STOP_REASON_UNSPECIFIED,
}


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _job_context(request: worker_pb2.RankRequest) -> JobContext:
    """The request's context; an unset message means none (its zeros are not hour 0, Monday)."""
    if not request.HasField("context"):
        return JobContext()
    c = request.context
    return JobContext(hour=c.hour, weekday=c.weekday, device=c.device, locale=c.locale, intent=c.intent)


def _rank_by_version(jobs: Sequence[tuple[LoadedModel, RankJob]]) -> list[RankResult]:
    """One batch may straddle a hot swap: each job is ranked by the version it was built for."""
    out: list[RankResult | None] = [None] * len(jobs)
    for model in {id(m): m for m, _ in jobs}.values():
        idx = [i for i, (m, _) in enumerate(jobs) if m is model]
        for i, r in zip(idx, model.ranker.rank([jobs[i][1] for i in idx]), strict=True):
            out[i] = r
    return [r for r in out if r is not None]


# The worker's one table from exception to status (the gateway's: server/errors.py).
_STATUS: dict[type[Exception], grpc.StatusCode] = {
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    GenerationQueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    CatalogGap: grpc.StatusCode.FAILED_PRECONDITION,
    NoLanguageModel: grpc.StatusCode.FAILED_PRECONDITION,
    PromptTooLong: grpc.StatusCode.FAILED_PRECONDITION,
    NoItemToPresent: grpc.StatusCode.INVALID_ARGUMENT,
}
_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _failed(code: grpc.StatusCode, message: str) -> worker_pb2.RankOutcome:
    return worker_pb2.RankOutcome(code=code.value[0], message=message)


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(self, model: LoadedModel, cfg: WorkerConfig, metrics: Metrics) -> None:
        self.model = model  # replaced whole by worker/swap.py; read it once per request
        self.cfg = cfg
        self.metrics = metrics
        self.live = LiveCatalog()
        self.catalog_lock = asyncio.Lock()
        # The one thread that runs ranking batches and every catalog mutation, so a
        # batch never sees a catalog half changed.
        self.model_executor = ThreadPoolExecutor(1, thread_name_prefix="batch-rank")
        self.rank_batcher: Batcher[tuple[LoadedModel, RankJob], RankResult] = Batcher(
            _rank_by_version,
            name="rank",
            max_batch=cfg.max_batch,
            max_delay=cfg.max_delay,
            max_queue=cfg.max_queue,
            metrics=metrics,
            executor=self.model_executor,
        )
        self._rows_waiting = 0  # RankRows rows sent to the model thread and not yet answered
        self._streams: dict[asyncio.Task[object], bool] = {}  # open RankStream calls -> busy
        self._draining = False
        self.rank_socket = RankSocket(self.rank_now, self.rank_rows)

    def _rows(self, ids: list[str], model: LoadedModel | None = None) -> np.ndarray:
        return item_rows(model or self.model, ids)

    def _job(self, request: worker_pb2.RankRequest, model: LoadedModel) -> RankJob:
        """A plain Rank request as a ranking job (worker/rank_rows.py builds every job)."""
        return build_job(
            model,
            user_id=request.user_id,
            forgotten_at=request.forgotten_at,
            history=[(h.item_id, h.weight, h.timestamp) for h in request.history],
            exclude=request.exclude_item_ids,
            dismissed=request.dismissed_item_ids,
            seen=request.seen_item_ids,
            include_categories=request.include_categories,
            exclude_categories=request.exclude_categories,
            k=request.k,
            include_seen=request.include_seen,
            context=_job_context(request),
        )

    async def Rank(
        self, request: worker_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.RankResponse:
        outcome = await self._rank_outcome(request, _deadline(context))
        if outcome.code:
            await context.abort(_CODES[outcome.code], outcome.message)
        return outcome.response

    def _rank_reply(self, model: LoadedModel, res: RankResult) -> worker_pb2.RankResponse:
        catalog = model.catalog
        if res.pool_keys is not None:  # a shard's answer: what server/shards.py merges by
            n = res.rows.size
            near = res.near if res.near is not None else np.zeros(n, np.float32)
            items = [
                worker_pb2.RankedItem(
                    item_id=catalog[r].item_id, title=catalog[r].title, score=s, row=r, pool_key=key, near=e
                )
                for r, s, key, e in zip(
                    res.rows.tolist(), res.scores.tolist(), res.pool_keys.tolist(), near.tolist(), strict=True
                )
            ]
        else:
            items = [
                worker_pb2.RankedItem(item_id=catalog[r].item_id, title=catalog[r].title, score=float(s))
                for r, s in zip(res.rows.tolist(), res.scores.tolist(), strict=True)
            ]
        return worker_pb2.RankResponse(
            items=items,
            model_version=model.name,
            batch_size=res.batch_size,
            catalog_seq=self.live.applied_seq,
            pool=res.pool,
            demotion=res.demotion,
        )

    async def _rank_outcome(
        self, request: worker_pb2.RankRequest, deadline: float | None
    ) -> worker_pb2.RankOutcome:
        """One Rank request (alone, or one of a RankBatch): its response, or its status."""
        self.metrics.inc("rank_requests")
        if not 1 <= request.k <= MAX_K:
            return _failed(grpc.StatusCode.INVALID_ARGUMENT, f"k must be in 1..{MAX_K}, got {request.k}")
        model = self.model
        try:
            res = await self.rank_batcher.submit((model, self._job(request, model)), deadline)
        except (QueueFull, DeadlineExpired) as e:
            return _failed(_STATUS[type(e)], str(e))
        return worker_pb2.RankOutcome(response=self._rank_reply(model, res))

    async def RankBatch(
        self, request: worker_pb2.RankBatchRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.RankBatchResponse:
        # Every request goes into the same rank batcher as a Rank call does; the
        # gateway has coalesced them already, so they mostly land in one batch.
        deadline = _deadline(context)
        outcomes = await asyncio.gather(*(self._rank_outcome(r, deadline) for r in request.requests))
        return worker_pb2.RankBatchResponse(outcomes=outcomes)

    async def RankRows(
        self, request: worker_pb2.RankRowsRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.RankRowsResponse:
        return await self.rank_rows(request, _deadline(context))

    async def RankStream(
        self, request_iterator: AsyncIterator[worker_pb2.RankRowsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.RankRowsResponse]:
        """RankRows on a long-lived stream: each batch answered in order, tagged with its batch_id.
        The stream ends when the gateway ends it, or when this worker drains (`close_streams`)."""
        task = asyncio.current_task()
        assert task is not None
        self._streams[task] = False
        try:
            async for request in request_iterator:
                self._streams[task] = True  # busy: a drain lets this batch finish
                reply = await self.rank_rows(request, batch_deadline(request))
                reply.batch_id = request.batch_id
                yield reply
                if self._draining:
                    return
                self._streams[task] = False
        finally:
            self._streams.pop(task, None)

    def close_streams(self) -> None:
        """On drain: end every RankStream, so the server's grace is not spent on idle streams.
        A stream waiting for its next batch ends now, one ranking a batch right after answering
        it; the gateway asks again, on a new call, whatever it sends meanwhile (to a worker
        still serving, as for any UNAVAILABLE worker)."""
        self._draining = True
        self.rank_socket.close()  # no new connections; those open answer until the process exits
        for task, busy in list(self._streams.items()):
            if not busy:
                task.cancel()

    def rank_now(
        self, request: worker_pb2.RankRowsRequest, deadline: float | None
    ) -> worker_pb2.RankRowsResponse | None:
        """The batch's answer when it can be given at once: a full queue's refusal (rows waiting
        past max_queue: RESOURCE_EXHAUSTED each), or a small batch with nothing queued and no
        catalog change under way (changes run only under catalog_lock) ranked right here, on the
        event loop: the hop to the model thread and the wake-up back cost more than its ranking
        (other work in the model thread only reads). None: `rank_rows` ranks it there."""
        n = len(request.rows)
        if self._rows_waiting + n > self.cfg.max_queue and self._rows_waiting:
            self.metrics.inc("rank_requests", n)
            self.metrics.inc("rank_rejected", n)
            msg = f"rank queue full ({self._rows_waiting} rows waiting)"
            code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            return worker_pb2.RankRowsResponse(codes=[code] * n, messages=[msg] * n, offsets=[0] * (n + 1))
        if n <= INLINE_ROWS and not self._rows_waiting and not self.catalog_lock.locked():
            self.metrics.inc("rank_requests", n)
            reply = rank_rows(self.model, request, self.live.applied_seq, deadline)
            self.metrics.observe("rank_batch_size", reply.batch_size, SIZE_BOUNDS)
            return reply
        return None

    async def rank_rows(
        self, request: worker_pb2.RankRowsRequest, deadline: float | None
    ) -> worker_pb2.RankRowsResponse:
        """The gateway's batch is the batch: one ranking call (worker/rank_rows.py), at once
        (`rank_now`) or in the model thread."""
        reply = self.rank_now(request, deadline)
        if reply is not None:
            return reply
        n = len(request.rows)
        self.metrics.inc("rank_requests", n)
        self._rows_waiting += n
        try:
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(
                self.model_executor, rank_rows, self.model, request, self.live.applied_seq, deadline
            )
        finally:
            self._rows_waiting -= n
        self.metrics.observe("rank_batch_size", reply.batch_size, SIZE_BOUNDS)
        return reply

    async def RankSocket(
        self, request: worker_pb2.RankSocketRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.RankSocketResponse:
        """The local rank socket (worker/rank_socket.py), opened on the first ask; no path for a
        TCP listener (its gateways are on other hosts: RankStream)."""
        return worker_pb2.RankSocketResponse(path=await self.rank_socket.open(self.cfg.listen))

    async def Generate(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        m = self.model
        self.metrics.inc("generate_requests")
        hist = self._rows(list(request.history_item_ids), m)
        if hist.size < SHOW_HISTORY:  # a training user: the newest items the version holds
            held = m.held_history(request.user_id, request.forgotten_at).rows
            hist = np.asarray(list(dict.fromkeys([*hist.tolist(), *held.tolist()])), dtype=np.int64)
        max_new = min(request.max_new_tokens or self.cfg.max_new_tokens, 4 * self.cfg.max_new_tokens)
        opts = TextOptions(
            max_new_tokens=max_new,
            temperature=request.temperature,
            top_p=request.top_p or 1.0,
            seed=request.seed,
        )
        t0 = time.monotonic()
        t_first: float | None = None
        try:
            recs = self._rows(list(request.recommended_item_ids), m).tolist()
            plan = plan_text(m, hist.tolist(), recs, request.intent, request.locale, opts)
            async for ev in explain(
                m, hist.tolist(), recs, opts=opts, deadline=_deadline(context), plan=plan
            ):
                if isinstance(ev, TextDone):
                    if t_first is not None and ev.tokens > 1:
                        per_token = (time.monotonic() - t_first) / (ev.tokens - 1)
                        self.metrics.observe("time_per_token_seconds", per_token)
                    # ev.text repeats the pieces already sent: the final carries none.
                    yield worker_pb2.GenerateResponse(
                        finished=True, stop_reason=_STOP[ev.stop_reason], reason=ev.reason, notice=plan.notice
                    )
                    return
                if ev.text:
                    if t_first is None:
                        t_first = time.monotonic()
                        self.metrics.observe("ttft_seconds", t_first - t0)
                    yield worker_pb2.GenerateResponse(text=ev.text)
        except (GenerationQueueFull, NoLanguageModel, PromptTooLong, NoItemToPresent) as e:
            await context.abort(_STATUS[type(e)], str(e))

    async def Similar(
        self, request: worker_pb2.SimilarRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.SimilarResponse:
        m = self.model
        if not 1 <= request.k <= MAX_K:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k must be in 1..{MAX_K}, got {request.k}")
        row = m.item_index.get(request.item_id)
        if row is None or m.ranker.deleted[row]:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"item_id {request.item_id!r} is not in the catalog"
            )
        assert row is not None  # abort raised otherwise
        loop = asyncio.get_running_loop()
        rows, sims = await loop.run_in_executor(self.model_executor, m.ranker.similar, row, request.k)
        return worker_pb2.SimilarResponse(
            items=[
                worker_pb2.RankedItem(
                    item_id=m.catalog[r].item_id, title=m.catalog[r].title, score=float(s), row=r
                )
                for r, s in zip(rows.tolist(), sims.tolist(), strict=True)
            ],
            model_version=m.name,
        )

    async def ApplyCatalog(
        self, request: worker_pb2.ApplyCatalogRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.ApplyCatalogResponse:
        changes = [
            Change(
                seq=c.seq,
                delete=c.delete,
                item=CatalogItem(c.item_id, c.title, c.text, tuple(c.categories)),
            )
            for c in request.changes
        ]
        loop = asyncio.get_running_loop()
        async with self.catalog_lock:
            model = self.model
            try:
                seq = await loop.run_in_executor(self.model_executor, self.live.apply, model, changes)
            except CatalogGap as e:
                await context.abort(_STATUS[CatalogGap], str(e))
        return worker_pb2.ApplyCatalogResponse(applied_seq=seq, model_version=model.name)

    async def Stats(
        self, request: worker_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.StatsResponse:
        m = self.metrics
        counters = dict(m.counters)
        llm = self.model.llm
        if llm is not None:
            stats = llm.stats()
            for k, v in dataclasses.asdict(stats).items():
                if isinstance(v, int | float):
                    counters[f"llm_{k}"] = float(v)
            # Generations by how they ended (eos, length, deadline, cancelled, error).
            for reason, n in stats.finished.items():
                counters[f"llm_finished_{reason}"] = float(n)
        return worker_pb2.StatsResponse(
            model_version=self.model.name,
            queue_depth=self.rank_batcher.depth + self._rows_waiting,
            shard_index=self.cfg.shard_index,
            shard_count=self.cfg.shard_count,
            counters=counters,
            histograms={
                name: worker_pb2.Histogram(bounds=list(h.bounds), counts=h.cumulative(), sum=h.sum)
                for name, h in list(m.histograms.items())
            },
        )
