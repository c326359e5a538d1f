"""Two real `recgen serve` gateways on one PostgreSQL (`--state postgresql://...`):
feedback sent to either is in the other's very next answer."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tests.pg import PostgresServer
from tools.harness.procs import Gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gateways(model_root: Path, postgres: PostgresServer) -> Iterator[tuple[Gateway, Gateway]]:
    url = postgres.new_database()
    a = Gateway(model_root, url, "--workers", "1", "--max-new-tokens", "8")
    b = Gateway(model_root, url, "--workers", "1", "--max-new-tokens", "8")
    try:
        yield a.start(), b.start()
    finally:
        for gw in (a, b):
            if gw.proc is not None:
                gw.stop(signal.SIGKILL)


@pytest.fixture()
def stubs(gateways: tuple[Gateway, Gateway]) -> Iterator[tuple[pbg.RecommenderStub, pbg.RecommenderStub]]:
    a, b = gateways
    with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
        yield pbg.RecommenderStub(ca), pbg.RecommenderStub(cb)


def ids(stub: pbg.RecommenderStub, user: str, k: int = 10) -> list[str]:
    return [i.item_id for i in stub.Recommend(pb.RecommendRequest(user_id=user, k=k), timeout=30).items]


def send(
    stub: pbg.RecommenderStub, event_id: str, user: str, item: str, kind: int
) -> pb.SendFeedbackResponse:
    return stub.SendFeedback(
        pb.SendFeedbackRequest(event_id=event_id, user_id=user, item_id=item, type=kind), timeout=10
    )


def test_feedback_to_one_gateway_changes_the_others_next_answer(stubs) -> None:
    a, b = stubs
    user = "shared-fan"
    top = ids(b, user)[0]
    assert send(a, "shared-1", user, top, pb.FEEDBACK_TYPE_DISMISS).stored
    assert top not in ids(b, user, k=20)  # B's very next answer, no wait
    # Clicks through B change A's answer, and a retry of A's event through B is a duplicate.
    before = ids(a, user)
    assert send(b, "shared-2", user, "50", pb.FEEDBACK_TYPE_CLICK).stored  # Star Wars (1977)
    assert send(b, "shared-3", user, "172", pb.FEEDBACK_TYPE_CLICK).stored  # Empire Strikes Back
    after = ids(a, user)
    assert after != before and "50" not in after and "172" not in after
    assert send(b, "shared-1", user, top, pb.FEEDBACK_TYPE_DISMISS).stored is False
    with pytest.raises(grpc.RpcError) as e:
        send(b, "shared-1", user, top, pb.FEEDBACK_TYPE_CLICK)  # the same id, another payload
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_database_down_is_unavailable_then_recovers(stubs, postgres: PostgresServer) -> None:
    a, b = stubs
    postgres.stop()
    try:
        for call in (
            lambda: send(a, "down-1", "down", "1", pb.FEEDBACK_TYPE_CLICK),
            lambda: ids(b, "down"),
        ):
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
            assert "state store" in (e.value.details() or "")
    finally:
        postgres.start()
    assert send(a, "down-1", "down", "1", pb.FEEDBACK_TYPE_CLICK).stored  # not acknowledged before
    assert "1" not in ids(b, "down")
