"""recgen_client against a real `recgen serve` (mutual TLS, tokens; see conftest.py), plus the
retry policy against a local stub server that refuses first attempts."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
import uuid
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

import recgen_client
from recgen_client import (
    PUBLISHED_SERVICE_CONFIG,
    AlreadyExists,
    AsyncRecgenClient,
    CatalogItem,
    Context,
    DeadlineExceeded,
    FeedbackEvent,
    FeedbackType,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RecgenClient,
    Recommendation,
    StreamFinal,
    StreamItems,
    StreamText,
    TextStatus,
    Unauthenticated,
    Unavailable,
)
from recgen_client._gen import recommender_pb2 as pb
from recgen_client._gen import recommender_pb2_grpc as pbg

T = "2024-05-01T12:00:00Z"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- the package ------------------------------------------------------------------


def test_depends_only_on_grpcio_and_protobuf() -> None:
    try:
        requires = importlib.metadata.requires("recgen-client") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("recgen-client is not installed (tests run from the source tree)")
    reqs = {r.split(">")[0].split("<")[0].split("=")[0].strip() for r in requires}
    assert reqs == {"grpcio", "protobuf"}
    if os.environ.get("RECGEN_TEST_ISOLATED") == "1":
        assert importlib.util.find_spec("recgen") is None, "the server package must not be importable here"
        assert "site-packages" in (recgen_client.__file__ or ""), recgen_client.__file__


# --- recommend -----------------------------------------------------------------------


def test_recommend_returns_plain_typed_items(client: RecgenClient) -> None:
    rec = client.recommend(uid("pc-rec"), k=5, context=Context(device="mobile", locale="en-US"))
    assert isinstance(rec, Recommendation) and len(rec.items) == 5
    assert all(i.item_id and i.title for i in rec.items)
    assert [i.score for i in rec.items] == sorted((i.score for i in rec.items), reverse=True)
    assert rec.request_id and rec.model_version
    assert rec.text == "" and rec.text_status is TextStatus.UNSPECIFIED

    again = client.recommend(uid("pc-rec"), k=5, exclude=[rec.items[0].item_id], timeout=10)
    assert rec.items[0].item_id not in [i.item_id for i in again.items]


def test_recommend_batch_answers_each_user_alone(client: RecgenClient) -> None:
    users = [uid("pc-batch"), "1", "", uid("pc-batch")]
    out = client.recommend_batch(users, k=4)
    assert len(out) == 4
    assert isinstance(out[2], InvalidArgument) and "user_id" in out[2].details  # returned, not raised
    for u, r in zip(users, out, strict=True):
        if u:
            assert isinstance(r, Recommendation) and len(r.items) == 4 and all(i.title for i in r.items)
            assert [i.item_id for i in r.items] == [i.item_id for i in client.recommend(u, k=4).items]
    with pytest.raises(InvalidArgument):
        client.recommend_batch([uid("pc-many")] * 257)


def test_recommend_with_text(client: RecgenClient) -> None:
    rec = client.recommend(uid("pc-text"), k=3, explain=True)
    assert isinstance(rec.text_status, TextStatus) and rec.text_status is not TextStatus.UNSPECIFIED
    if rec.text_status is TextStatus.COMPLETE:
        assert rec.text


def test_stream_items_then_text_then_final(client: RecgenClient) -> None:
    events = list(client.stream(uid("pc-stream"), k=3))
    assert isinstance(events[0], StreamItems) and len(events[0].recommendation.items) == 3
    assert isinstance(events[-1], StreamFinal)
    pieces = [e.piece for e in events[1:-1] if isinstance(e, StreamText)]
    assert len(pieces) == len(events) - 2
    final = events[-1].recommendation
    if final.text_status is TextStatus.COMPLETE:
        assert "".join(pieces) == final.text


def test_leaving_a_stream_early_cancels_it(client: RecgenClient) -> None:
    for event in client.stream(uid("pc-stream-early"), k=3):
        assert isinstance(event, StreamItems)
        break
    assert len(client.recommend(uid("pc-after"), k=2).items) == 2  # the channel is still fine


# --- feedback ------------------------------------------------------------------------


def test_feedback_is_durable_idempotent_and_shapes_the_next_answer(client: RecgenClient) -> None:
    user = uid("pc-fb")
    rec = client.recommend(user, k=5)
    clicked = rec.items[0].item_id
    event_id = uid("pc-ev")
    assert client.feedback(user, clicked, FeedbackType.CLICK, request_id=rec.request_id, event_id=event_id)
    assert not client.feedback(user, clicked, "click", request_id=rec.request_id, event_id=event_id)  # replay
    assert clicked not in [i.item_id for i in client.recommend(user, k=5).items]  # seen: never again
    assert client.feedback(user, rec.items[1].item_id, "rate", value=4.5, timestamp=T)


def test_errors_are_typed(server, client: RecgenClient) -> None:
    user = uid("pc-err")
    with pytest.raises(NotFound) as e:
        client.feedback(user, "no-such-item-xyz", FeedbackType.VIEW)
    assert e.value.code is grpc.StatusCode.NOT_FOUND and e.value.details
    with pytest.raises(InvalidArgument):
        client.recommend(user, k=1000)
    event_id = uid("pc-ev")
    client.feedback(user, "1", FeedbackType.VIEW, event_id=event_id, timestamp=T)
    with pytest.raises(AlreadyExists):
        client.feedback(user, "2", FeedbackType.VIEW, event_id=event_id, timestamp=T)
    with pytest.raises(DeadlineExceeded):
        client.recommend(user, k=3, explain=True, timeout=0.001)
    with pytest.raises(ValueError):
        client.feedback(user, "1", "poke")

    with server.client(None) as anonymous, pytest.raises(Unauthenticated):
        anonymous.recommend(user)
    with server.client("wrong-token-0123456789") as wrong, pytest.raises(Unauthenticated):
        wrong.recommend(user)
    with pytest.raises(PermissionDenied):
        client.forget_user(user)  # a serve token on an admin method


def test_mutual_tls_refuses_a_client_without_certificate(server) -> None:
    with server.client("serve", client_cert=None, retries=False) as rc, pytest.raises(Unavailable):
        rc.recommend(uid("pc-tls"), timeout=10)


# --- admin -------------------------------------------------------------------------


def test_import_events_in_batches_then_resent(admin: RecgenClient, client: RecgenClient) -> None:
    user, prefix = uid("pc-imp"), uid("pc-imp-ev")

    def events() -> Iterator[FeedbackEvent]:  # a generator: read lazily
        for i in range(250):
            yield FeedbackEvent(f"{prefix}-{i}", user, str(i + 1), FeedbackType.CLICK, timestamp=T)

    r = admin.import_events(events(), batch_size=100)
    assert (r.received, r.stored, r.duplicates, r.batches) == (250, 250, 0, 3)
    r = admin.import_events(events(), batch_size=100)  # a resend after a lost answer
    assert (r.received, r.stored, r.duplicates) == (250, 0, 250)
    seen = {str(i + 1) for i in range(250)}
    assert not seen & {i.item_id for i in client.recommend(user, k=20).items}

    bad = [FeedbackEvent(f"{prefix}-bad", user, "no-such-item-xyz", FeedbackType.CLICK, timestamp=T)]
    with pytest.raises(InvalidArgument) as e:
        admin.import_events(bad)
    assert "row 1" in e.value.details
    with pytest.raises(PermissionDenied):
        client.import_events(events())
    forgotten = admin.forget_user(user)
    assert forgotten.events_deleted == 250


def test_catalog_upsert_similar_delete(admin: RecgenClient, client: RecgenClient) -> None:
    item_id, cat = uid("pc-item"), uid("PcCat")
    change = admin.upsert_items([CatalogItem(item_id, "Client Test Movie (2026)", "A quiet drama.", [cat])])
    assert (change.added, change.updated) == (1, 0) and change.catalog_seq >= 1
    rec = client.recommend(uid("pc-cat"), include_categories=[cat])
    assert [i.item_id for i in rec.items] == [item_id]
    similar = client.similar_items(item_id, k=4)
    assert len(similar) == 4 and item_id not in [i.item_id for i in similar]
    assert admin.delete_items([item_id]).deleted == 1
    assert client.recommend(uid("pc-cat"), include_categories=[cat]).items == ()
    with pytest.raises(NotFound):
        admin.delete_items(["no-such-item-xyz"])


# --- asyncio -----------------------------------------------------------------------


def test_async_client(server) -> None:
    async def main() -> None:
        user = uid("pc-aio")
        async with AsyncRecgenClient(
            server.target, token=server.serve_token, tls=server.ca, client_cert=server.cert, timeout=30
        ) as rc:
            await rc.wait_ready(30)
            rec = await rc.recommend(user, k=4)
            assert len(rec.items) == 4
            (batch,) = await rc.recommend_batch([user], k=4)
            assert isinstance(batch, Recommendation) and [i.item_id for i in batch.items] == [
                i.item_id for i in rec.items
            ]
            kinds = [type(e) async for e in rc.stream(user, k=2)]
            assert kinds[0] is StreamItems and kinds[-1] is StreamFinal
            assert await rc.feedback(user, rec.items[0].item_id, FeedbackType.CLICK)
            with pytest.raises(NotFound):
                await rc.similar_items("no-such-item-xyz")

    asyncio.run(main())


# --- retries: the published service config, against a stub server ---------------------


class _Flaky(pbg.RecommenderServicer):
    """Refuses the first attempt of every call with UNAVAILABLE, remembers what it saw."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.event_ids: list[str] = []

    def _first_fails(self, method: str, context: grpc.ServicerContext) -> None:
        self.attempts[method] = self.attempts.get(method, 0) + 1
        if self.attempts[method] == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "draining")

    def Recommend(self, request, context):  # noqa: N802
        self._first_fails("Recommend", context)
        return pb.RecommendResponse(request_id="r1", items=[pb.Item(item_id="1", title="One", score=1.0)])

    def SendFeedback(self, request, context):  # noqa: N802
        self.event_ids.append(request.event_id)
        self._first_fails("SendFeedback", context)
        return pb.SendFeedbackResponse(stored=True)

    def DeleteItems(self, request, context):  # noqa: N802
        self._first_fails("DeleteItems", context)
        return pb.DeleteItemsResponse(deleted=1)


@pytest.fixture()
def flaky() -> Iterator[tuple[_Flaky, str]]:
    servicer = _Flaky()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pbg.add_RecommenderServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        srv.stop(None)


def test_published_retry_policy(flaky: tuple[_Flaky, str]) -> None:
    servicer, target = flaky
    names = {n["method"] for c in json.loads(PUBLISHED_SERVICE_CONFIG)["methodConfig"] for n in c["name"]}
    assert {"Recommend", "StreamRecommend", "SendFeedback"} <= names and "DeleteItems" not in names
    with RecgenClient(target, timeout=10) as rc:
        assert rc.recommend("u").items[0].item_id == "1"
        assert rc.feedback("u", "1", FeedbackType.CLICK)
        assert len(servicer.event_ids) == 2 and servicer.event_ids[0] == servicer.event_ids[1]  # same id
        with pytest.raises(Unavailable):
            rc.delete_items(["1"])  # not idempotent: never retried
    assert servicer.attempts == {"Recommend": 2, "SendFeedback": 2, "DeleteItems": 1}


def test_retries_off(flaky: tuple[_Flaky, str]) -> None:
    servicer, target = flaky
    with RecgenClient(target, timeout=10, retries=False) as rc, pytest.raises(Unavailable):
        rc.recommend("u")
    assert servicer.attempts == {"Recommend": 1}
