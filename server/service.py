"""The public servicer, recgen.v1.Recommender: validate → user state → worker → reply.

A request's path reads top-down here: `_prepare` validates and loads the
user's state from the store, `worker_calls.rank` asks a worker (retrying on
another one if the first is unreachable: ranking is side-effect free),
`worker_calls.text` streams the grounded text from a worker, and the answer
is logged as an impression. The rpcs raise; the one interceptor in
`server/errors.py` turns every exception into its status code.

What it does not do: pick, call or retry workers, fan out to shards, or keep
the text inside the deadline (server/worker_calls.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Container

import grpc

from recgen import tracing
from recgen.logs import request_id
from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from recgen.worker.v1 import worker_pb2 as wpb
from server.access_log import RequestIds
from server.bulk_import import ImportCall, batch_from_pb
from server.catalog import CatalogSync
from server.errors import NotFound, Overloaded
from server.feedback import HISTORY_CAP, history_events
from server.privacy import UserIdPolicy
from server.rank_batch import RankBatcher
from server.ranked import Ranked
from server.ratelimit import RateLimiter
from server.state import Event, StateStore, UserState
from server.user_state_cache import UserStateCache
from server.validation import (
    InvalidArgument,
    Recommendation,
    catalog_items_from_pb,
    feedback_from_pb,
    item_ids_from_pb,
    recommendation_from_pb,
    similar_from_pb,
    user_id_from_pb,
)
from server.worker_calls import Prepared, WorkerCalls
from server.workers import NoWorkerAvailable, WorkerPool

LOG = logging.getLogger(__name__)

_TEXT_STATUS = {
    wpb.STOP_REASON_EOS: pb.TEXT_STATUS_COMPLETE,
    wpb.STOP_REASON_LENGTH: pb.TEXT_STATUS_COMPLETE,
    wpb.STOP_REASON_UNGROUNDED: pb.TEXT_STATUS_UNGROUNDED,
    wpb.STOP_REASON_DEADLINE: pb.TEXT_STATUS_CUT_SHORT,
}


MAX_BATCH_USERS = 256  # requests per RecommendBatch


def _no_title(item_id: str) -> str:
    return ""


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _failed(code: grpc.StatusCode, message: str) -> pb.RecommendBatchResult:
    return pb.RecommendBatchResult(code=code.value[0], message=message)


def _status_of(e: BaseException) -> tuple[grpc.StatusCode, str]:
    """One RecommendBatch entry's failure as the status its own Recommend would have had."""
    if isinstance(e, grpc.aio.AioRpcError):  # a worker's status passes through
        return e.code(), e.details() or ""
    if isinstance(e, NoWorkerAvailable):
        return grpc.StatusCode.UNAVAILABLE, str(e)
    if isinstance(e, asyncio.TimeoutError | asyncio.CancelledError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    LOG.error("RecommendBatch entry failed", exc_info=e)
    return grpc.StatusCode.INTERNAL, "internal error"


class Admission:
    """At most `limit` requests in flight; the rest are refused at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def __enter__(self) -> Admission:
        if self.in_flight >= self.limit:
            raise Overloaded(f"server busy: {self.in_flight} requests in flight")
        self.in_flight += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.in_flight -= 1


class RecommenderService(pbg.RecommenderServicer):
    def __init__(
        self,
        store: StateStore,
        pool: WorkerPool,
        catalog_ids: Container[str],
        *,
        max_in_flight: int = 256,
        user_ids: UserIdPolicy | None = None,
        feedback_limiter: RateLimiter | None = None,
        live_catalog: CatalogSync | None = None,
        user_cache: UserStateCache | None = None,
        rank_batcher: RankBatcher | None = None,
    ) -> None:
        self.worker_calls = WorkerCalls(pool, rank_batcher=rank_batcher, live_catalog=live_catalog)
        self.live_catalog = live_catalog
        self.user_cache = user_cache  # None: every Recommend reads the store (several writers)
        self.store = store
        self.catalog_ids = catalog_ids
        self.admission = Admission(max_in_flight)
        self.user_ids = user_ids or UserIdPolicy()
        self.feedback_limiter = feedback_limiter or RateLimiter(rate=0, burst=0)
        self._request_ids = RequestIds()

    def _log_request(
        self, method: str, p: Prepared, t0: float, t_rank: float, resp: pb.RecommendResponse, items: int
    ) -> None:
        """One line per request at debug level: ids, items answered and timings, no raw user id."""
        if LOG.isEnabledFor(logging.DEBUG):
            now = time.perf_counter()
            LOG.debug(
                "%s request_id=%s user=%s k=%d explain=%s items=%d rank_ms=%.1f text_ms=%.1f "
                "total_ms=%.1f text_status=%s",
                method,
                p.request_id,
                self.user_ids(p.req.user_id),
                p.req.k,
                p.req.explain,
                items,
                (t_rank - t0) * 1e3,
                (now - t_rank) * 1e3,
                (now - t0) * 1e3,
                pb.TextStatus.Name(resp.text_status),
                extra={
                    "fields": {
                        "request_id": p.request_id,
                        "method": method,
                        "items": items,
                        "rank_ms": round((t_rank - t0) * 1e3, 2),
                        "total_ms": round((now - t0) * 1e3, 2),
                    }
                },
            )

    # ------------------------------------------------------------------ steps

    async def _prepare(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> Prepared:
        with tracing.span("gateway.validate"):
            req = recommendation_from_pb(request)
        with tracing.span("gateway.state_read"):
            state = await self._user_state(req.user_id)
        return self._prepared(req, state, _deadline(context))

    def _prepared(
        self, req: Recommendation, state: UserState, deadline: float | None, entry: int | None = None
    ) -> Prepared:
        # The call's id (the caller's x-request-id, or the one the interceptor made: the same id
        # is in the response headers and every log line); an entry of a batch gets "<id>/<n>".
        rid = request_id.get() or self._request_ids.new()
        return Prepared(
            req=req,
            request_id=rid if entry is None else f"{rid}/{entry}",
            history=history_events(state.events),
            exclude=list(dict.fromkeys([*req.exclude_item_ids, *state.dismissed])),
            dismissed=list(state.dismissed),
            deadline=deadline,
            seen=list(state.seen),
            forgotten_at=state.forgotten_at,
        )

    async def _user_state(self, user_id: str) -> UserState:
        cache = self.user_cache
        if cache is None:
            return await self.store.user_state(user_id, HISTORY_CAP)
        state = cache.get(user_id)
        if state is None:
            ticket = cache.ticket()
            state = await self.store.user_state(user_id, HISTORY_CAP)
            cache.fill(user_id, ticket, *state)
        return state

    async def _store_event(self, ev: Event) -> bool:
        """The durable write, then the cache: both inside the shield, so a caller
        cancelled mid-write cannot leave a committed event out of the cache."""
        try:
            stored = await self.store.add_event(ev)
        except BaseException:
            if self.user_cache is not None:  # the write may or may not have committed
                self.user_cache.invalidate(ev.user_id)
            raise
        if self.user_cache is not None:
            if stored:
                self.user_cache.record(ev)
            else:  # a retry of a stored event: the cache may predate it, read it again
                self.user_cache.invalidate(ev.user_id)
        return stored

    async def _import_batch(self, events: list[Event]) -> int:
        """One ImportEvents batch, durably; then the cache drops its users (whether or
        not it committed: the store is read again on their next Recommend)."""
        try:
            return await self.store.add_events_bulk(events)
        finally:
            if self.user_cache is not None:
                for user_id in {ev.user_id for ev in events}:
                    self.user_cache.invalidate(user_id)

    async def _forget(self, user_id: str) -> tuple[int, int]:
        try:
            return await self.store.forget_user(user_id)
        finally:
            if self.user_cache is not None:
                self.user_cache.invalidate(user_id)

    def _response(self, p: Prepared, ranked: Ranked) -> pb.RecommendResponse:
        """The public reply: the worker sent ids and scores, the titles are the gateway's."""
        titles = ranked.titles
        if titles is None:
            title = self.live_catalog.title if self.live_catalog is not None else _no_title
            titles = [title(i) for i in ranked.item_ids]
        return pb.RecommendResponse(
            request_id=p.request_id,
            items=[
                pb.Item(item_id=i, title=t, score=s)
                for i, t, s in zip(ranked.item_ids, titles, ranked.scores, strict=True)
            ],
            model_version=ranked.model_version,
        )

    def _log(self, p: Prepared, ranked: Ranked) -> None:
        self.store.queue_impression(p.request_id, p.req.user_id, ranked.item_ids, ranked.model_version)

    @staticmethod
    def _finish(resp: pb.RecommendResponse, text: str, final: wpb.GenerateResponse) -> None:
        resp.text = text
        if final.stop_reason in _TEXT_STATUS:
            resp.text_status = _TEXT_STATUS[final.stop_reason]
        else:
            resp.text_status = pb.TEXT_STATUS_UNAVAILABLE
        reasons = []
        if resp.text_status != pb.TEXT_STATUS_COMPLETE:
            reasons.append(final.reason or pb.TextStatus.Name(resp.text_status))
        if final.notice:  # said even of a complete text, e.g. "answered in English: ..."
            reasons.append(final.notice)
        resp.text_reason = "; ".join(reasons)

    # ------------------------------------------------------------------ rpcs

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        with self.admission:
            t0 = time.perf_counter()
            p = await self._prepare(request, context)
            ranked = await self.worker_calls.rank(p)
            t_rank = time.perf_counter()
            resp = self._response(p, ranked)
            self._log(p, ranked)
            if p.req.explain and ranked.item_ids:
                text, final = "", wpb.GenerateResponse()
                async for piece in self.worker_calls.text(p, ranked.item_ids):
                    text += piece.text
                    final = piece
                self._finish(resp, text, final)
            elif p.req.explain:  # a filter left nothing to present: say so
                self._finish(resp, "", wpb.GenerateResponse(finished=True, reason="no items to present"))
            self._log_request("Recommend", p, t0, t_rank, resp, len(resp.items))
            return resp

    async def RecommendBatch(
        self, request: pb.RecommendBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendBatchResponse:
        """Many users in one call: each validated and answered alone (its own status), their
        rows ranked in the worker batches with every other request (server/worker_calls.py)."""
        reqs = request.requests
        if len(reqs) > MAX_BATCH_USERS:
            raise InvalidArgument(
                f"at most {MAX_BATCH_USERS} requests per RecommendBatch, got {len(reqs)}", "requests"
            )
        with self.admission:
            deadline = _deadline(context)
            results: list[pb.RecommendBatchResult | None] = [None] * len(reqs)
            todo: list[tuple[int, Recommendation]] = []
            for i, r in enumerate(reqs):
                try:
                    req = recommendation_from_pb(r)
                    if req.explain:
                        raise InvalidArgument(
                            "explain is not served by RecommendBatch (use Recommend or StreamRecommend)",
                            f"requests[{i}].explain",
                        )
                except InvalidArgument as e:
                    results[i] = _failed(grpc.StatusCode.INVALID_ARGUMENT, f"requests[{i}]: {e}")
                    continue
                todo.append((i, req))
            states = await self._user_states([req.user_id for _, req in todo])
            ps = [
                self._prepared(req, st, deadline, entry=i) for (i, req), st in zip(todo, states, strict=True)
            ]
            outs = await self.worker_calls.rank_many(ps, deadline)
            for (i, _), p, out in zip(todo, ps, outs, strict=True):
                if isinstance(out, Ranked):
                    self._log(p, out)
                    results[i] = pb.RecommendBatchResult(response=self._response(p, out))
                else:
                    results[i] = _failed(*_status_of(out))
            return pb.RecommendBatchResponse(results=[r for r in results if r is not None])

    async def _user_states(self, user_ids: list[str]) -> list[UserState]:
        """Every user's state: cache hits at once, the misses read from the store together."""
        cache = self.user_cache
        states: list[UserState | None] = [None if cache is None else cache.get(u) for u in user_ids]
        missing = [i for i, st in enumerate(states) if st is None]
        if missing:
            read = await asyncio.gather(*(self._user_state(user_ids[i]) for i in missing))
            for i, st in zip(missing, read, strict=True):
                states[i] = st
        return [st for st in states if st is not None]

    async def StreamRecommend(
        self, request: pb.StreamRecommendRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamRecommendResponse]:
        with self.admission:
            t0 = time.perf_counter()
            p = await self._prepare(request.request, context)
            ranked = await self.worker_calls.rank(p)
            t_rank = time.perf_counter()
            first = self._response(p, ranked)
            self._log(p, ranked)
            yield pb.StreamRecommendResponse(items=first)
            text, final = "", wpb.GenerateResponse(finished=True, reason="no items to present")
            if ranked.item_ids:
                async for piece in self.worker_calls.text(p, ranked.item_ids):
                    if piece.text:
                        text += piece.text
                        yield pb.StreamRecommendResponse(text_piece=piece.text)
                    final = piece
            last = pb.RecommendResponse(request_id=p.request_id, model_version=ranked.model_version)
            self._finish(last, text, final)
            # The items went out in the first message: `last` carries only the text.
            self._log_request("StreamRecommend", p, t0, t_rank, last, len(first.items))
            yield pb.StreamRecommendResponse(final=last)

    async def SendFeedback(
        self, request: pb.SendFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> pb.SendFeedbackResponse:
        fb = feedback_from_pb(request)
        if not self.feedback_limiter.allow(fb.user_id):
            raise Overloaded("feedback rate limit for this user exceeded; retry later")
        if fb.item_id not in self.catalog_ids:
            raise NotFound(f"item_id {fb.item_id!r} is not in the catalog")
        ev = Event(
            event_id=fb.event_id,
            user_id=fb.user_id,
            item_id=fb.item_id,
            type=fb.type,
            value=fb.value,
            ts=fb.timestamp if fb.timestamp is not None else time.time(),
            request_id=fb.request_id,
        )
        # Shielded: once the write has started, a cancelled caller must not
        # leave us unsure whether it committed; it completes either way.
        stored = await asyncio.shield(self._store_event(ev))
        return pb.SendFeedbackResponse(stored=stored)

    async def SimilarItems(
        self, request: pb.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SimilarItemsResponse:
        with self.admission:
            item_id, k = similar_from_pb(request)
            if item_id not in self.catalog_ids:
                raise NotFound(f"item_id {item_id!r} is not in the catalog")
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            r = await self.worker_calls.ask("Similar", wpb.SimilarRequest(item_id=item_id, k=k), deadline)
            return pb.SimilarItemsResponse(
                items=[pb.Item(item_id=i.item_id, title=i.title, score=i.score) for i in r.items],
                model_version=r.model_version,
            )

    def _live(self) -> CatalogSync:
        if self.live_catalog is None:  # pragma: no cover - serve always has one
            raise NotFound("this gateway has no live catalog")
        return self.live_catalog

    async def UpsertItems(
        self, request: pb.UpsertItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertItemsResponse:
        items = catalog_items_from_pb(request)
        # Shielded like SendFeedback: once the change is written it is pushed to
        # the workers whether or not the caller is still waiting.
        added, updated, seq = await asyncio.shield(self._live().upsert(items))
        LOG.info("catalog: %d items added, %d updated (seq %d)", added, updated, seq)
        return pb.UpsertItemsResponse(added=added, updated=updated, catalog_seq=seq)

    async def DeleteItems(
        self, request: pb.DeleteItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteItemsResponse:
        ids = item_ids_from_pb(request)
        deleted, seq = await asyncio.shield(self._live().delete(ids))
        LOG.info("catalog: %d items deleted (seq %d)", deleted, seq)
        return pb.DeleteItemsResponse(deleted=deleted, catalog_seq=seq)

    async def ForgetUser(
        self, request: pb.ForgetUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.ForgetUserResponse:
        user_id = user_id_from_pb(request.user_id)
        events, impressions = await asyncio.shield(self._forget(user_id))
        LOG.info("forgot user %s: %d events, %d impressions", self.user_ids(user_id), events, impressions)
        return pb.ForgetUserResponse(events_deleted=events, impressions_deleted=impressions)

    async def ImportEvents(
        self, request_iterator: AsyncIterator[pb.ImportEventsRequest], context: grpc.aio.ServicerContext
    ) -> pb.ImportEventsResponse:
        """Admin: feedback history in bulk (contract: recommender.proto, server/bulk_import.py)."""
        with self.admission:
            call = ImportCall(self._import_batch)
            loop = asyncio.get_running_loop()
            async for msg in request_iterator:
                try:  # on a thread: 10,000 rows take tens of ms the event loop is not kept from
                    events = await loop.run_in_executor(
                        None, batch_from_pb, msg, call.read + 1, self.catalog_ids, time.time()
                    )
                except InvalidArgument as e:
                    await call.settle()  # the batches before it are durable (or their error comes first)
                    raise InvalidArgument(f"{e}; nothing of its batch was stored; {call.durable()}") from None
                await call.settle()  # one batch in flight: it committed while this one was checked
                call.start(events)
            await call.settle()
            LOG.info(
                "imported %d rows in %d batches: %d stored, %d duplicates",
                call.rows,
                call.batches,
                call.stored,
                call.duplicates,
            )
            return call.response()
