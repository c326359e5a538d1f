"""AsyncRecgenClient: RecgenClient's API on grpc.aio, for asyncio programs.

    async with AsyncRecgenClient("127.0.0.1:50051", token="...") as rc:
        rec = await rc.recommend("alice", k=5)
        async for event in rc.stream("alice"):
            ...

Same arguments, types, errors, deadlines and retry policy as RecgenClient
(recgen_client.client); create it inside the running event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from recgen_client import _requests as rq
from recgen_client._gen import recommender_pb2 as pb
from recgen_client._gen import recommender_pb2_grpc as pbg
from recgen_client._requests import DEFAULT, Timeout
from recgen_client.errors import RecgenError, Unavailable, from_rpc_error
from recgen_client.types import (
    CatalogChange,
    CatalogItem,
    Context,
    FeedbackEvent,
    FeedbackType,
    ForgetResult,
    ImportResult,
    Item,
    Recommendation,
    StreamEvent,
    batch_results,
    recommend_request,
    stream_event_from_pb,
)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as e:
        raise from_rpc_error(e) from e


class AsyncRecgenClient:
    """The asyncio twin of RecgenClient; see its docstring for the arguments."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool | bytes = False,
        client_cert: tuple[bytes, bytes] | None = None,
        server_name: str | None = None,
        timeout: float | None = 30.0,
        retries: bool | Mapping[str, Any] | str = True,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._s = rq.Settings.make(
            target,
            token=token,
            tls=tls,
            client_cert=client_cert,
            server_name=server_name,
            timeout=timeout,
            retries=retries,
            metadata=metadata,
            channel_options=channel_options,
        )
        if self._s.credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=self._s.options)
        else:
            self._channel = grpc.aio.secure_channel(target, self._s.credentials, options=self._s.options)
        self._stub = pbg.RecommenderStub(self._channel)  # type: ignore[no-untyped-call]  # generated

    async def recommend(
        self,
        user_id: str,
        k: int = 10,
        *,
        explain: bool = False,
        include_seen: bool = False,
        context: Context | None = None,
        exclude: Sequence[str] = (),
        include_categories: Sequence[str] = (),
        exclude_categories: Sequence[str] = (),
        timeout: Timeout = DEFAULT,
    ) -> Recommendation:
        req = recommend_request(
            user_id, k, explain, include_seen, context, exclude, include_categories, exclude_categories
        )
        with _translated():
            resp = await self._stub.Recommend(
                req, timeout=self._s.deadline(timeout), metadata=self._s.metadata
            )
        return Recommendation.from_pb(resp)

    async def recommend_batch(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        include_seen: bool = False,
        context: Context | None = None,
        exclude: Sequence[str] = (),
        include_categories: Sequence[str] = (),
        exclude_categories: Sequence[str] = (),
        timeout: Timeout = DEFAULT,
    ) -> list[Recommendation | RecgenError]:
        """Ranked items for many users in one call (up to 256; no text): entry i answers
        user_ids[i] with a Recommendation, or with the RecgenError (returned, not raised) that
        user's own recommend() would have raised. More than 256 users raises InvalidArgument."""
        if isinstance(user_ids, str):
            raise TypeError("user_ids takes a sequence of strings")
        reqs = [
            recommend_request(
                u, k, False, include_seen, context, exclude, include_categories, exclude_categories
            )
            for u in user_ids
        ]
        with _translated():
            resp = await self._stub.RecommendBatch(
                pb.RecommendBatchRequest(requests=reqs),
                timeout=self._s.deadline(timeout),
                metadata=self._s.metadata,
            )
        return batch_results(resp)

    async def stream(
        self,
        user_id: str,
        k: int = 10,
        *,
        include_seen: bool = False,
        context: Context | None = None,
        exclude: Sequence[str] = (),
        include_categories: Sequence[str] = (),
        exclude_categories: Sequence[str] = (),
        timeout: Timeout = DEFAULT,
    ) -> AsyncIterator[StreamEvent]:
        req = pb.StreamRecommendRequest(
            request=recommend_request(
                user_id, k, True, include_seen, context, exclude, include_categories, exclude_categories
            )
        )
        call = self._stub.StreamRecommend(req, timeout=self._s.deadline(timeout), metadata=self._s.metadata)
        try:
            with _translated():
                async for m in call:
                    yield stream_event_from_pb(m)
        finally:
            call.cancel()

    async def feedback(
        self,
        user_id: str,
        item_id: str,
        type: FeedbackType | str,
        *,
        value: float | None = None,
        timestamp: Any = "",
        request_id: str = "",
        event_id: str | None = None,
        timeout: Timeout = DEFAULT,
    ) -> bool:
        req = rq.feedback_request(user_id, item_id, type, value, timestamp, request_id, event_id)
        with _translated():
            resp = await self._stub.SendFeedback(
                req, timeout=self._s.deadline(timeout), metadata=self._s.metadata
            )
        return bool(resp.stored)

    async def similar_items(self, item_id: str, k: int = 10, *, timeout: Timeout = DEFAULT) -> list[Item]:
        with _translated():
            resp = await self._stub.SimilarItems(
                pb.SimilarItemsRequest(item_id=item_id, k=k),
                timeout=self._s.deadline(timeout),
                metadata=self._s.metadata,
            )
        return [Item.from_pb(i) for i in resp.items]

    async def import_events(
        self,
        events: Iterable[FeedbackEvent] | AsyncIterable[FeedbackEvent],
        *,
        batch_size: int = 1000,
        timeout: Timeout = DEFAULT,
    ) -> ImportResult:
        rq.check_batch_size(batch_size)
        batches = (
            _async_batches(events, batch_size)
            if isinstance(events, AsyncIterable)
            else rq.import_batches(events, batch_size)
        )
        with _translated():
            resp = await self._stub.ImportEvents(
                batches, timeout=self._s.deadline(timeout), metadata=self._s.metadata
            )
        return ImportResult.from_pb(resp)

    async def forget_user(self, user_id: str, *, timeout: Timeout = DEFAULT) -> ForgetResult:
        with _translated():
            r = await self._stub.ForgetUser(
                pb.ForgetUserRequest(user_id=user_id),
                timeout=self._s.deadline(timeout),
                metadata=self._s.metadata,
            )
        return ForgetResult(events_deleted=r.events_deleted, impressions_deleted=r.impressions_deleted)

    async def upsert_items(
        self, items: Iterable[CatalogItem], *, timeout: Timeout = DEFAULT
    ) -> CatalogChange:
        with _translated():
            r = await self._stub.UpsertItems(
                rq.upsert_request(items), timeout=self._s.deadline(timeout), metadata=self._s.metadata
            )
        return CatalogChange(added=r.added, updated=r.updated, catalog_seq=r.catalog_seq)

    async def delete_items(self, item_ids: Iterable[str], *, timeout: Timeout = DEFAULT) -> CatalogChange:
        with _translated():
            r = await self._stub.DeleteItems(
                rq.delete_request(item_ids), timeout=self._s.deadline(timeout), metadata=self._s.metadata
            )
        return CatalogChange(deleted=r.deleted, catalog_seq=r.catalog_seq)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the channel is connected (raises Unavailable after `timeout` seconds)."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            raise Unavailable(
                grpc.StatusCode.UNAVAILABLE, f"{self._s.target}: not connected after {timeout} s"
            ) from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncRecgenClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _async_batches(
    events: AsyncIterable[FeedbackEvent], batch_size: int
) -> AsyncIterator[pb.ImportEventsRequest]:
    batch: list[pb.SendFeedbackRequest] = []
    async for e in events:
        batch.append(e.to_pb())
        if len(batch) == batch_size:
            yield pb.ImportEventsRequest(events=batch)
            batch = []
    if batch:
        yield pb.ImportEventsRequest(events=batch)
