"""The gateway's interceptor around every call (server/errors.py): request ids, the server span,
the access line, the metrics call, on a real grpc.aio server on a loopback port.

The servicer is a small stand-in for the public one (its handlers are the generated ones, so the
interceptor sees what it sees in `recgen serve`): Recommend answers and logs a line of its own,
SendFeedback is refused as overloaded (RESOURCE_EXHAUSTED), SimilarItems fails validation.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from recgen import tracing
from recgen.logs import JsonFormatter, RedactingFilter, RequestIdFilter
from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from server.access_log import AccessLog, RequestIds
from server.auth import AuthInterceptor
from server.errors import ErrorStatus, Overloaded
from server.privacy import UserIdPolicy
from server.validation import InvalidArgument

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


class Servicer(pbg.RecommenderServicer):
    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    async def Recommend(self, request: pb.RecommendRequest, context: Any) -> pb.RecommendResponse:
        logging.getLogger("server.service").info("ranking for a user")
        self.seen["traceparent"] = tracing.current_traceparent()
        with tracing.span("state.read", user_cache=True):
            await asyncio.sleep(0)
        return pb.RecommendResponse(items=[pb.Item(item_id="i1", score=1.0)])

    async def SendFeedback(self, request: pb.SendFeedbackRequest, context: Any) -> pb.SendFeedbackResponse:
        raise Overloaded("feedback rate limit for this user exceeded; retry later")

    async def SimilarItems(self, request: pb.SimilarItemsRequest, context: Any) -> pb.SimilarItemsResponse:
        raise InvalidArgument("k must be 1..100", "k")

    async def ForgetUser(self, request: pb.ForgetUserRequest, context: Any) -> pb.ForgetUserResponse:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted by the servicer itself")


class Metrics:
    """Records what the interceptor reports (server/metrics.py's observe_request signature)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []
        self.started: list[str] = []

    def request_started(self, method: str) -> None:
        self.started.append(method)

    def observe_request(
        self, method: str, code: grpc.StatusCode, seconds: float, *, text: bool = False
    ) -> None:
        assert seconds >= 0
        self.calls.append((method, code.name, text))


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    """Every record as the CLI's JSON handler writes it (request id and redaction filters)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # A library that configured logging earlier in the session (import-linter, in test_layers)
    # disables the loggers that existed then, ours included: on again for this test.
    ours = [logging.getLogger(name) for name in ("recgen.access", "server.service", "server.errors", "x")]
    was = [lg.disabled for lg in ours]
    for lg in ours:
        lg.disabled = False
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        for lg, d in zip(ours, was, strict=True):
            lg.disabled = d


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.setup("recgen-gateway", None, exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


async def _serve(metrics: Metrics, calls: Any, request_id_header: bool = True) -> Any:
    interceptor = ErrorStatus(
        metrics, access_log=AccessLog(UserIdPolicy(salt="k")), request_id_header=request_id_header
    )
    server = grpc.aio.server(interceptors=[interceptor])
    servicer = Servicer()
    pbg.add_RecommenderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            return await calls(pbg.RecommenderStub(ch), servicer, interceptor)
    finally:
        await server.stop(None)


def _records(log: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in log.getvalue().splitlines()]


def test_request_ids_headers_log_lines_and_access_lines(log: io.StringIO) -> None:
    metrics = Metrics()

    async def calls(stub: Any, servicer: Servicer, interceptor: ErrorStatus) -> dict:
        out = {}
        call = stub.Recommend(pb.RecommendRequest(user_id="alice", k=3), metadata=[("x-request-id", "abc-1")])
        await call
        out["given"] = dict(await call.initial_metadata())["x-request-id"]
        call = stub.Recommend(pb.RecommendRequest(user_id="alice", k=5, explain=True))
        await call
        out["made"] = dict(await call.initial_metadata())["x-request-id"]
        call = stub.Recommend(pb.RecommendRequest(user_id="bob", k=3), metadata=[("x-request-id", "x" * 65)])
        await call
        out["too_long"] = dict(await call.initial_metadata())["x-request-id"]
        call = stub.SendFeedback(pb.SendFeedbackRequest(user_id="alice"), metadata=[("x-request-id", "fb-7")])
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        out["overloaded"] = e.value.code()
        out["failed_id"] = dict(await call.initial_metadata())["x-request-id"]
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.SimilarItems(pb.SimilarItemsRequest(item_id="i1"))
        out["invalid"] = e.value.code()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ForgetUser(pb.ForgetUserRequest(user_id="carol"))
        out["aborted"] = e.value.code()
        out["cached"] = len(interceptor._cache)
        return out

    out = asyncio.run(_serve(metrics, calls))
    assert out["given"] == "abc-1"  # a good caller id is kept
    assert out["made"] != "abc-1" and 0 < len(out["made"]) <= 32
    assert out["too_long"] not in ("", "x" * 65)  # a bad one is replaced, never echoed
    assert out["overloaded"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert out["failed_id"] == "fb-7"  # failures carry it too
    assert out["invalid"] == grpc.StatusCode.INVALID_ARGUMENT
    assert out["aborted"] == grpc.StatusCode.PERMISSION_DENIED
    # One wrapped handler per method, built once (7 calls of 4 methods: 4 wrapped handlers).
    assert out["cached"] == 4

    records = _records(log)
    # The servicer's own line carries the call's request id.
    own = [r for r in records if r["msg"] == "ranking for a user"]
    assert [r["request_id"] for r in own] == ["abc-1", out["made"], out["too_long"]]
    access = [r for r in records if r["logger"] == "recgen.access"]
    assert len(access) == 6  # one per call
    first, second, _, feedback, invalid, aborted = access
    assert (first["level"], first["method"], first["code"], first["request_id"]) == (
        "INFO",
        "Recommend",
        "OK",
        "abc-1",
    )
    assert first["k"] == 3 and first["explain"] is False and first["duration_ms"] >= 0
    assert first["user"] == UserIdPolicy(salt="k")("alice") and second["user"] == first["user"]
    for raw in ("alice", "bob", "carol"):
        assert raw not in log.getvalue()  # never the raw id
    assert (feedback["level"], feedback["code"], feedback["request_id"]) == (
        "WARNING",
        "RESOURCE_EXHAUSTED",
        "fb-7",
    )
    assert (invalid["level"], invalid["code"]) == ("WARNING", "INVALID_ARGUMENT")
    assert (aborted["code"], aborted["user"]) == ("PERMISSION_DENIED", UserIdPolicy(salt="k")("carol"))
    # Rejected calls are counted; Recommend with explain is reported as a text call.
    assert metrics.calls == [
        ("Recommend", "OK", False),
        ("Recommend", "OK", True),
        ("Recommend", "OK", False),
        ("SendFeedback", "RESOURCE_EXHAUSTED", False),
        ("SimilarItems", "INVALID_ARGUMENT", False),
        ("ForgetUser", "PERMISSION_DENIED", False),
    ]


def test_the_server_span_continues_the_callers_trace(spans: InMemorySpanExporter) -> None:
    async def calls(stub: Any, servicer: Servicer, interceptor: ErrorStatus) -> Servicer:
        await stub.Recommend(pb.RecommendRequest(user_id="u", k=1), metadata=[("traceparent", TRACEPARENT)])
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.SendFeedback(pb.SendFeedbackRequest(user_id="u"))
        return servicer

    servicer = asyncio.run(_serve(Metrics(), calls))
    finished = {s.name: s for s in spans.get_finished_spans()}
    server = finished["recgen.v1.Recommender/Recommend"]
    assert f"{server.context.trace_id:032x}" == CALLER_TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert server.kind.name == "SERVER" and server.attributes["rpc.grpc.status_code"] == 0
    child = finished["state.read"]
    assert child.parent is not None and child.parent.span_id == server.context.span_id
    # What the worker hop passes on: the server span, in the caller's trace.
    assert servicer.seen["traceparent"].split("-")[1:3] == [CALLER_TRACE, f"{server.context.span_id:016x}"]
    # A call without a traceparent starts its own trace; a failure marks its span.
    failed = finished["recgen.v1.Recommender/SendFeedback"]
    assert failed.parent is None and f"{failed.context.trace_id:032x}" != CALLER_TRACE
    assert failed.status.status_code.name == "ERROR"
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def test_tracing_off_costs_a_shared_null_context() -> None:
    tracing.shutdown()
    assert tracing.span("a") is tracing.span("b", "00-x-y-01", k=1)
    assert tracing.current_traceparent() == ""


def test_request_ids_are_unique_and_bad_ones_replaced() -> None:
    ids = RequestIds()
    made = {ids.new() for _ in range(1000)}
    assert len(made) == 1000
    assert ids.accept("caller-42") == "caller-42"
    assert ids.accept("x" * 64) == "x" * 64
    for bad in ("", "a\nb", "ü", "x" * 65, 7):
        assert ids.accept(bad) != bad


def test_secrets_are_redacted_in_log_lines(log: io.StringIO) -> None:
    logging.getLogger("x").warning("cannot connect to %s", "postgresql://app:s3cret@db:5432/recgen")
    logging.getLogger("x").warning("header authorization: Bearer abcdefghijklmnop")
    text = log.getvalue()
    assert "s3cret" not in text and "abcdefghijklmnop" not in text
    assert "postgresql://app:***@db:5432/recgen" in text


def test_a_span_measured_elsewhere_joins_its_parent(spans: InMemorySpanExporter) -> None:
    tracing.record("worker.queue_wait", TRACEPARENT, 1_000, 5_000, rows=3, skipped=None)
    (s,) = spans.get_finished_spans()
    assert f"{s.context.trace_id:032x}" == CALLER_TRACE and f"{s.parent.span_id:016x}" == CALLER_SPAN
    assert (s.start_time, s.end_time, dict(s.attributes)) == (1_000, 5_000, {"rows": 3})


@pytest.mark.parametrize("header", [True, False])
def test_request_id_is_always_in_the_trailers_and_in_the_headers_unless_turned_off(
    log: io.StringIO, header: bool
) -> None:
    """The trailers carry the id at no extra write, with every status, and keep it beside a
    BadRequest's error details (abort replaces the trailers it is given)."""

    async def calls(stub: Any, servicer: Servicer, interceptor: ErrorStatus) -> list:
        out = []
        ok = stub.Recommend(pb.RecommendRequest(user_id="alice", k=3), metadata=[("x-request-id", "ok-1")])
        await ok
        out.append(ok)
        for call in (
            stub.SimilarItems(pb.SimilarItemsRequest(item_id="i1"), metadata=[("x-request-id", "bad-2")]),
            stub.ForgetUser(pb.ForgetUserRequest(user_id="c"), metadata=[("x-request-id", "ab-3")]),
        ):
            with pytest.raises(grpc.aio.AioRpcError):
                await call
            out.append(call)
        return [
            (
                dict(await c.initial_metadata()).get("x-request-id"),
                dict(await c.trailing_metadata()).get("x-request-id"),
                "grpc-status-details-bin" in dict(await c.trailing_metadata()),
            )
            for c in out
        ]

    got = asyncio.run(_serve(Metrics(), calls, request_id_header=header))
    want_header = (lambda rid: rid) if header else (lambda rid: None)
    assert got == [
        (want_header("ok-1"), "ok-1", False),
        (want_header("bad-2"), "bad-2", True),  # the field violation's details are still there
        (want_header("ab-3"), "ab-3", False),
    ]


def test_calls_refused_by_auth_are_counted_logged_and_never_parsed(log: io.StringIO) -> None:
    """server/main.py's order: ErrorStatus first, then AuthInterceptor."""
    token = "serve-token-0123456789"
    metrics = Metrics()

    async def run() -> dict:
        interceptors = [
            ErrorStatus(metrics, access_log=AccessLog(UserIdPolicy(salt="k"))),
            AuthInterceptor({token: "serve"}),
        ]
        server = grpc.aio.server(interceptors=interceptors)
        pbg.add_RecommenderServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        out: dict = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = pbg.RecommenderStub(ch)
                call = stub.Recommend(pb.RecommendRequest(user_id="mallory", k=3))
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call
                out["no_token"] = e.value.code()
                out["header"] = dict(await call.trailing_metadata()).get("x-request-id")
                # Bytes that are no RecommendRequest, without a token: refused before any parsing.
                raw = ch.unary_unary("/recgen.v1.Recommender/Recommend")
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await raw(b"\xff\xff\xff")
                out["garbage"] = e.value.code()
                serving = [("authorization", f"Bearer {token}")]
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.ForgetUser(pb.ForgetUserRequest(user_id="mallory"), metadata=serving)
                out["admin_only"] = e.value.code()
                await stub.Recommend(pb.RecommendRequest(user_id="u", k=1), metadata=serving)
        finally:
            await server.stop(None)
        return out

    out = asyncio.run(run())
    assert out["no_token"] == out["garbage"] == grpc.StatusCode.UNAUTHENTICATED
    assert out["admin_only"] == grpc.StatusCode.PERMISSION_DENIED
    assert out["header"]
    assert [(m, c) for m, c, _ in metrics.calls] == [
        ("Recommend", "UNAUTHENTICATED"),
        ("Recommend", "UNAUTHENTICATED"),
        ("ForgetUser", "PERMISSION_DENIED"),
        ("Recommend", "OK"),
    ]
    access = [r for r in _records(log) if r["logger"] == "recgen.access"]
    assert [(r["level"], r["code"]) for r in access] == [
        ("WARNING", "UNAUTHENTICATED"),
        ("WARNING", "UNAUTHENTICATED"),
        ("WARNING", "PERMISSION_DENIED"),
        ("INFO", "OK"),
    ]
    assert access[0]["request_id"] == out["header"]
    assert "user" not in access[0]  # a refused request is not read: not even its user id
