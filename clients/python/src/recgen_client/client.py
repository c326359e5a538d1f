"""RecgenClient: the synchronous client of the recgen API (recgen.v1.Recommender).

    with RecgenClient("127.0.0.1:50051", token="...") as rc:
        rec = rc.recommend("alice", k=5, explain=True)

One channel per client (thread-safe: share one client across threads). Every
method takes plain Python values and returns the dataclasses of
recgen_client.types; a failed call raises a recgen_client.errors.RecgenError
subclass. Deadlines: the client's `timeout` (seconds) for every call, or a
call's own `timeout=`. Retries: the published gRPC service config (UNAVAILABLE
only, idempotent methods only), done by gRPC itself inside the deadline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc

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


class RecgenClient:
    """A connection to one recgen gateway (or a load balancer in front of several).

    target: "host:port" (any gRPC target: "dns:///recgen.internal:443", "unix:/path").
    token: sent as `authorization: Bearer TOKEN` on every call (serve or admin token).
    tls: False plaintext; True TLS with the system's roots; bytes: the roots' PEM.
    client_cert: (certificate chain PEM, private key PEM) for mutual TLS.
    server_name: the name the server certificate must carry, when not the target's host.
    timeout: default deadline of every call in seconds (None: no deadline).
    retries: True the published retry policy; False none; a dict or JSON string: your own
        gRPC service config.
    metadata: extra metadata sent on every call; channel_options: extra gRPC channel options.
    """

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
            self._channel = grpc.insecure_channel(target, options=self._s.options)
        else:
            self._channel = grpc.secure_channel(target, self._s.credentials, options=self._s.options)
        self._stub = pbg.RecommenderStub(self._channel)  # type: ignore[no-untyped-call]  # generated

    # --- serving (a serve or admin token) ---------------------------------------------

    def recommend(
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
        """Ranked items for `user_id` now (k: 1..100) and, with explain, a text presenting them.
        Unknown users get a cold-start answer, never an error."""
        req = recommend_request(
            user_id, k, explain, include_seen, context, exclude, include_categories, exclude_categories
        )
        with _translated():
            resp = self._stub.Recommend(req, timeout=self._s.deadline(timeout), metadata=self._s.metadata)
        return Recommendation.from_pb(resp)

    def recommend_batch(
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
            resp = self._stub.RecommendBatch(
                pb.RecommendBatchRequest(requests=reqs),
                timeout=self._s.deadline(timeout),
                metadata=self._s.metadata,
            )
        return batch_results(resp)

    def stream(
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
    ) -> Iterator[StreamEvent]:
        """recommend(explain=True) as events: StreamItems, then StreamText pieces as the text is
        written, then StreamFinal. The deadline covers the whole stream; leaving the loop early
        cancels the call."""
        req = pb.StreamRecommendRequest(
            request=recommend_request(
                user_id, k, True, include_seen, context, exclude, include_categories, exclude_categories
            )
        )
        call = self._stub.StreamRecommend(req, timeout=self._s.deadline(timeout), metadata=self._s.metadata)
        try:
            with _translated():
                for m in call:
                    yield stream_event_from_pb(m)
        finally:
            call.cancel()  # no-op once the stream has ended

    def feedback(
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
        """Record what a user did (type: FeedbackType or its name, e.g. "click"); returns once it is
        durable: True if stored, False if this event_id was already stored (a replay).
        event_id defaults to a new UUID, so retries of this call are never counted twice; pass
        your own to make retries across calls or processes idempotent too."""
        req = rq.feedback_request(user_id, item_id, type, value, timestamp, request_id, event_id)
        with _translated():
            resp = self._stub.SendFeedback(req, timeout=self._s.deadline(timeout), metadata=self._s.metadata)
        return bool(resp.stored)

    def similar_items(self, item_id: str, k: int = 10, *, timeout: Timeout = DEFAULT) -> list[Item]:
        """Items like `item_id` (NotFound when the catalog lacks it), most similar first."""
        with _translated():
            resp = self._stub.SimilarItems(
                pb.SimilarItemsRequest(item_id=item_id, k=k),
                timeout=self._s.deadline(timeout),
                metadata=self._s.metadata,
            )
        return [Item.from_pb(i) for i in resp.items]

    # --- admin (an admin token) --------------------------------------------------------

    def import_events(
        self, events: Iterable[FeedbackEvent], *, batch_size: int = 1000, timeout: Timeout = DEFAULT
    ) -> ImportResult:
        """Load feedback history in bulk: `events` (any iterable, read lazily) in messages of
        batch_size rows, each committed in one transaction, in order. Idempotent by event_id, so
        after Unavailable / DeadlineExceeded send the same events again (not retried by itself:
        a client stream cannot be replayed). A bad row raises InvalidArgument naming it."""
        rq.check_batch_size(batch_size)
        with _translated():
            resp = self._stub.ImportEvents(
                rq.import_batches(events, batch_size),
                timeout=self._s.deadline(timeout),
                metadata=self._s.metadata,
            )
        return ImportResult.from_pb(resp)

    def forget_user(self, user_id: str, *, timeout: Timeout = DEFAULT) -> ForgetResult:
        """Delete everything the server's state holds about a user."""
        with _translated():
            r = self._stub.ForgetUser(
                pb.ForgetUserRequest(user_id=user_id),
                timeout=self._s.deadline(timeout),
                metadata=self._s.metadata,
            )
        return ForgetResult(events_deleted=r.events_deleted, impressions_deleted=r.impressions_deleted)

    def upsert_items(self, items: Iterable[CatalogItem], *, timeout: Timeout = DEFAULT) -> CatalogChange:
        """Add items to the live catalog or change them (1..1000 per call), without retraining."""
        with _translated():
            r = self._stub.UpsertItems(
                rq.upsert_request(items), timeout=self._s.deadline(timeout), metadata=self._s.metadata
            )
        return CatalogChange(added=r.added, updated=r.updated, catalog_seq=r.catalog_seq)

    def delete_items(self, item_ids: Iterable[str], *, timeout: Timeout = DEFAULT) -> CatalogChange:
        """Remove items from every answer (1..1000 per call; unknown ids: NotFound, nothing deleted).
        Not retried by itself: a retry after a lost answer would be NotFound."""
        with _translated():
            r = self._stub.DeleteItems(
                rq.delete_request(item_ids), timeout=self._s.deadline(timeout), metadata=self._s.metadata
            )
        return CatalogChange(deleted=r.deleted, catalog_seq=r.catalog_seq)

    # --- the channel ---------------------------------------------------------------

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel is connected (raises Unavailable after `timeout` seconds)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Unavailable(
                grpc.StatusCode.UNAVAILABLE, f"{self._s.target}: not connected after {timeout} s"
            ) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RecgenClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
