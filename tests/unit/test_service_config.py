"""The published client retry policy (clients/service_config.json) against a real gRPC server.

A small real Recommender server on a loopback port answers UNAVAILABLE to the
first attempt of each call, the way a draining or restarting gateway does. A
client channel carrying the service config must succeed without seeing the
failure; one without it must see UNAVAILABLE. Codes the policy does not name
(RESOURCE_EXHAUSTED: overload) must not be retried.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg

ROOT = Path(__file__).resolve().parents[2]
SERVICE_CONFIG = ROOT / "clients" / "service_config.json"


class FlakyRecommender(pbg.RecommenderServicer):
    """Fails the first `fail_first` attempts of every request id with `code`, then answers."""

    def __init__(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, fail_first: int = 1) -> None:
        self.code, self.fail_first = code, fail_first
        self.attempts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def _attempt(self, key: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.attempts[key] += 1
            n = self.attempts[key]
        if n <= self.fail_first:
            context.abort(self.code, f"attempt {n} refused (test)")

    def Recommend(self, request, context):
        self._attempt(f"rec:{request.user_id}", context)
        return pb.RecommendResponse(request_id=request.user_id, items=[pb.Item(item_id="1", title="One")])

    def StreamRecommend(self, request, context):
        self._attempt(f"stream:{request.request.user_id}", context)
        yield pb.StreamRecommendResponse(
            items=pb.RecommendResponse(items=[pb.Item(item_id="1", title="One")])
        )

    def SendFeedback(self, request, context):
        self._attempt(f"fb:{request.event_id}", context)
        return pb.SendFeedbackResponse(stored=True)


@pytest.fixture()
def flaky() -> Iterator[tuple[FlakyRecommender, str]]:
    servicer = FlakyRecommender()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pbg.add_RecommenderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def channel(target: str, with_policy: bool) -> grpc.Channel:
    options = [("grpc.service_config", SERVICE_CONFIG.read_text())] if with_policy else []
    return grpc.insecure_channel(target, options=options)


def test_service_config_names_only_real_methods() -> None:
    cfg = json.loads(SERVICE_CONFIG.read_text())
    service = pb.DESCRIPTOR.services_by_name["Recommender"]
    named = [n for mc in cfg["methodConfig"] for n in mc["name"]]
    assert named, "no method configured"
    for n in named:
        assert n["service"] == service.full_name
        assert n["method"] in service.methods_by_name, n
    # Only UNAVAILABLE (the call never reached a working gateway) is retried; never an overload.
    for mc in cfg["methodConfig"]:
        assert mc["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
        assert 2 <= mc["retryPolicy"]["maxAttempts"] <= 5  # gRPC caps attempts at 5
    # DeleteItems is not idempotent (a repeated delete answers NOT_FOUND): not retried.
    assert {"service": service.full_name, "method": "DeleteItems"} not in named


def test_unary_call_is_retried_transparently(flaky) -> None:
    servicer, target = flaky
    with channel(target, with_policy=True) as ch:
        r = pbg.RecommenderStub(ch).Recommend(pb.RecommendRequest(user_id="u1"), timeout=5)
    assert r.request_id == "u1"
    assert servicer.attempts["rec:u1"] == 2


def test_without_the_policy_the_caller_sees_unavailable(flaky) -> None:
    servicer, target = flaky
    with channel(target, with_policy=False) as ch, pytest.raises(grpc.RpcError) as err:
        pbg.RecommenderStub(ch).Recommend(pb.RecommendRequest(user_id="u2"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts["rec:u2"] == 1


def test_feedback_retry_resends_the_same_event_id(flaky) -> None:
    servicer, target = flaky
    with channel(target, with_policy=True) as ch:
        ack = pbg.RecommenderStub(ch).SendFeedback(
            pb.SendFeedbackRequest(event_id="e-1", user_id="u", item_id="1", type=pb.FEEDBACK_TYPE_CLICK),
            timeout=5,
        )
    assert ack.stored
    # Both attempts carried event_id e-1: the gateway's idempotency key makes the retry safe.
    assert servicer.attempts["fb:e-1"] == 2


def test_stream_is_retried_before_its_first_message(flaky) -> None:
    servicer, target = flaky
    with channel(target, with_policy=True) as ch:
        events = list(
            pbg.RecommenderStub(ch).StreamRecommend(
                pb.StreamRecommendRequest(request=pb.RecommendRequest(user_id="s1")), timeout=5
            )
        )
    assert [e.WhichOneof("event") for e in events] == ["items"]
    assert servicer.attempts["stream:s1"] == 2


def test_overload_is_not_retried() -> None:
    servicer = FlakyRecommender(code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pbg.add_RecommenderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with channel(f"127.0.0.1:{port}", with_policy=True) as ch, pytest.raises(grpc.RpcError) as err:
            pbg.RecommenderStub(ch).Recommend(pb.RecommendRequest(user_id="busy"), timeout=5)
    finally:
        server.stop(grace=None)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert servicer.attempts["rec:busy"] == 1
