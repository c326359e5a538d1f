"""Bad input at scale: hypothesis drives every rpc of recgen.v1.Recommender through ONE real
`recgen serve` (a real worker, a real SQLite state file) and checks that nothing breaks it.

Each case must get a precise status: never INTERNAL or UNKNOWN (bugs), never UNAVAILABLE
(the server has a healthy worker and store: a case must not take it down). At the end:
the gateway's log (stderr of the gateway and its worker, captured to a file) holds no
traceback, health is SERVING, and every event that SendFeedback acknowledged (OK,
stored=True) or ImportEvents counted as stored is in the SQLite file, unless a later
ForgetUser of its user deleted it.

What is sent: random Unicode, control characters and NUL in ids and text, extreme and
negative numbers, unknown enum values (proto3 enums are open), huge repeated fields (over
the 1 MiB message limit too), oversized and odd metadata, and truncated or garbage
protobuf bytes on a raw channel (no serializer). tests/e2e/test_hostile_input.py holds the
finer oracle (which field each INVALID_ARGUMENT names, what an OK answer contains); this
file is about breadth and the server's survival.

Case counts come from the hypothesis profile named by $HYPOTHESIS_PROFILE: `ci` (the
default: 500 cases in all) or `chaos` (10,000, run by `make chaos`). Both derandomized, no
example database: a failure reproduces from the same code.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procs import Gateway

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"),
]

# ------------------------------------------------------------ profiles

_COMMON: dict[str, Any] = dict(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile("ci", **_COMMON)
settings.register_profile("chaos", **_COMMON)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
SCALE = {"ci": 1, "chaos": 20}[PROFILE]

# Cases per property in the `ci` profile: they add up to 500 (TOTAL_CASES).
CASES = {
    "feedback": 90,
    "recommend": 70,
    "stream": 15,
    "similar": 45,
    "forget": 30,
    "upsert": 45,
    "delete": 30,
    "import": 40,
    "metadata": 35,
    "raw": 100,
}
TOTAL_CASES = sum(CASES.values()) * SCALE


def cases(name: str) -> settings:
    return settings(max_examples=CASES[name] * SCALE)


Code = grpc.StatusCode
NEVER = {Code.INTERNAL, Code.UNKNOWN, Code.UNAVAILABLE}
SERVICE = "recgen.v1.Recommender"
TIMEOUT = 60.0

# ------------------------------------------------------------ strategies

PIECES = ["x", "é", "😀", "\x00", "\x1f", "\x7f", "\x85", "\n", "\u202e", "\ufeff", "<|im_end|>", "'; --"]
TEXT = st.one_of(
    st.just(""),
    st.text(max_size=40),
    st.text(st.characters(categories=["Cc"]), max_size=6),
    st.builds(lambda p, n: p * n, st.sampled_from(PIECES), st.integers(1, 5000)),
)
PRINTABLE = st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=30)
INT = st.one_of(
    st.integers(-(2**31), 2**31 - 1), st.sampled_from([-(2**31), -1, 0, 1, 10, 100, 101, 2**31 - 1])
)
FLOAT = st.floats(width=32)  # NaN, ±inf, subnormals
TIME = st.one_of(TEXT, st.datetimes().map(lambda t: t.isoformat()), st.just("2024-13-01T00:00:00Z"))
MANY_IDS = st.integers(1001, 120_000).map(lambda n: [str(i) for i in range(n)])  # over 1,000 and 1 MiB


@st.composite
def request(draw: st.DrawFn, cls: Any, valid: dict[str, Any], hostile: dict[str, Any]) -> Any:
    """A `cls` message whose fields are valid except 0..2 of them (0 about a third of the time)."""
    fields = {name: draw(strategy) for name, strategy in valid.items()}
    names = draw(st.lists(st.sampled_from(sorted(hostile)), max_size=2, unique=True)) if hostile else []
    for name in names:
        fields[name] = draw(hostile[name])
    return cls(**{k: v for k, v in fields.items() if v is not None})


USER = st.one_of(st.sampled_from(["alice", "bob", "carol"]), PRINTABLE)
CATALOG_ITEM_ID = st.integers(1, 1682).map(str)  # MovieLens-100K
ITEM = st.one_of(CATALOG_ITEM_ID, st.sampled_from(["0", "1683", "-1", "01"]), PRINTABLE)
CONTEXT = request(
    pb.Context,
    {
        "device": st.sampled_from(["", "tv", "phone"]),
        "local_time": st.just(""),
        "intent": st.text(max_size=30),
    },
    {"device": TEXT, "local_time": TIME, "locale": TEXT, "intent": TEXT},
)
RECOMMEND = request(
    pb.RecommendRequest,
    {
        "user_id": USER,
        "k": st.integers(0, 100),
        "context": CONTEXT,
        "exclude_item_ids": st.lists(CATALOG_ITEM_ID, max_size=5),
        "include_seen": st.booleans(),
    },
    {
        "user_id": TEXT,
        "k": INT,
        "exclude_item_ids": st.one_of(st.lists(TEXT, max_size=5), MANY_IDS),
        "include_categories": st.lists(TEXT, max_size=60),
        "exclude_categories": st.lists(TEXT, max_size=3),
    },
)
FEEDBACK = request(
    pb.SendFeedbackRequest,
    {
        "event_id": st.just("ev-"),  # made unique in the test
        "user_id": USER,
        "item_id": CATALOG_ITEM_ID,
        "type": st.sampled_from([1, 2, 3, 5]),
        "timestamp": st.just(""),
    },
    {
        "event_id": st.one_of(TEXT, st.just("dup-event")),
        "user_id": TEXT,
        "item_id": ITEM,
        "type": INT,  # unknown enum values included
        "value": FLOAT,
        "timestamp": TIME,
        "request_id": TEXT,
    },
)
SIMILAR = request(
    pb.SimilarItemsRequest,
    {"item_id": CATALOG_ITEM_ID, "k": st.integers(0, 100)},
    {"item_id": ITEM, "k": INT},
)
FZ_ID = st.integers(1, 1700).map(lambda i: f"fz{i}")  # ids the fuzz may add and delete
CATALOG_VALID = {
    "item_id": FZ_ID,
    "title": PRINTABLE,
    "categories": st.lists(st.sampled_from(["Drama", "Fuzz"]), max_size=2),
}
CATALOG_ITEM = request(
    pb.CatalogItem,
    CATALOG_VALID,
    {"item_id": TEXT, "title": TEXT, "text": TEXT, "categories": st.lists(TEXT, max_size=40)},
)
UPSERT = st.builds(
    pb.UpsertItemsRequest,
    items=st.one_of(
        st.lists(request(pb.CatalogItem, CATALOG_VALID, {}), min_size=1, max_size=4),
        st.lists(CATALOG_ITEM, max_size=4),
        st.integers(1001, 1003).map(lambda n: [pb.CatalogItem()] * n),
    ),
)
# Only ids the fuzz upserted (fzN) or ids not in the catalog: the MovieLens items stay.
DELETE = st.builds(
    pb.DeleteItemsRequest,
    item_ids=st.one_of(
        st.lists(FZ_ID, min_size=1, max_size=4),
        st.lists(st.one_of(FZ_ID, TEXT.filter(lambda t: not t.isdigit())), max_size=4),
        MANY_IDS,
    ),
)

# --- raw bytes: truncated or corrupted encodings of real requests, and plain garbage
MESSAGES: dict[str, st.SearchStrategy[Any]] = {
    "Recommend": RECOMMEND,
    "SendFeedback": FEEDBACK,
    "SimilarItems": SIMILAR,
    "ForgetUser": st.builds(pb.ForgetUserRequest, user_id=st.one_of(USER, TEXT)),
    "UpsertItems": UPSERT,
    "DeleteItems": DELETE,
}


@st.composite
def mangled(draw: st.DrawFn, msg: st.SearchStrategy[Any]) -> bytes:
    data = bytearray(draw(msg).SerializeToString())
    how = draw(st.sampled_from(["truncate", "flip", "splice", "garbage"]))
    if how == "truncate" and data:
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if how == "splice":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at]) + draw(st.binary(max_size=64)) + bytes(data[at:])
    return draw(st.binary(max_size=256))


# --- metadata: oversized values, odd keys; keys gRPC itself refuses client-side are not sent
META_KEY = st.one_of(
    st.sampled_from(["x-fuzz", "authorization", "user-agent", "grpc-timeout", "x-fuzz-bin", "te"]),
    st.from_regex(r"[a-z0-9_.-]{1,40}", fullmatch=True),
)
META_VALUE = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.integers(1, 200_000).map(lambda n: "v" * n),
)


# ------------------------------------------------------------ fixtures


class Ledger:
    """What the server acknowledged: event_id -> user_id, minus the users forgotten since."""

    def __init__(self) -> None:
        self.acked: dict[str, str] = {}
        self.cases = 0

    def __repr__(self) -> str:  # keeps hypothesis' reports short
        return f"<Ledger {len(self.acked)} acked>"

    def forget(self, user_id: str) -> None:
        self.acked = {e: u for e, u in self.acked.items() if u != user_id}


@pytest.fixture(scope="module")
def gateway(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    d = tmp_path_factory.mktemp("fuzz")
    gw = Gateway(model_root, d / "state.db", "--workers", "1", "--max-new-tokens", "8", log_dir=d)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def channel(gateway: Gateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.target, options=[("grpc.max_send_message_length", 8 << 20)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pbg.RecommenderStub:
    return pbg.RecommenderStub(channel)


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


def _call(ledger: Ledger, fn: Callable[[], Any]) -> tuple[grpc.StatusCode, Any]:
    """Run one rpc; its status code and reply (None unless OK). Fails on an imprecise status."""
    ledger.cases += 1
    try:
        reply = fn()
        event("OK")
        return Code.OK, reply
    except grpc.RpcError as e:
        code = e.code()  # type: ignore[attr-defined]
        event(code.name)
        assert code not in NEVER, f"{code.name}: {e.details()}"  # type: ignore[attr-defined]
        if code == Code.INVALID_ARGUMENT:
            assert e.details(), "INVALID_ARGUMENT without a message"  # type: ignore[attr-defined]
        return code, None


# ------------------------------------------------------------ properties


@cases("feedback")
@given(req=FEEDBACK)
def test_send_feedback(stub, ledger, req: pb.SendFeedbackRequest) -> None:
    if req.event_id == "ev-":  # a valid id, unique (a derandomized uuid strategy repeats itself)
        req.event_id = f"ev-{uuid.uuid4()}"
    code, r = _call(ledger, lambda: stub.SendFeedback(req, timeout=TIMEOUT))
    allowed = {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.ALREADY_EXISTS, Code.RESOURCE_EXHAUSTED}
    assert code in allowed
    if code == Code.OK and r.stored:
        ledger.acked[req.event_id] = req.user_id


@cases("recommend")
@given(req=RECOMMEND)
def test_recommend(stub, ledger, req: pb.RecommendRequest) -> None:
    code, r = _call(ledger, lambda: stub.Recommend(req, timeout=TIMEOUT))
    assert code in {Code.OK, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED}
    if code == Code.OK:
        assert len(r.items) <= (req.k or 10)


@cases("stream")
@given(req=RECOMMEND)
def test_stream_recommend(stub, ledger, req: pb.RecommendRequest) -> None:
    sreq = pb.StreamRecommendRequest(request=req)
    code, _ = _call(ledger, lambda: list(stub.StreamRecommend(sreq, timeout=TIMEOUT)))
    assert code in {Code.OK, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED}


@cases("similar")
@given(req=SIMILAR)
def test_similar_items(stub, ledger, req: pb.SimilarItemsRequest) -> None:
    code, _ = _call(ledger, lambda: stub.SimilarItems(req, timeout=TIMEOUT))
    assert code in {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED}


@cases("forget")
@given(user_id=st.one_of(USER, TEXT))
def test_forget_user(stub, ledger, user_id: str) -> None:
    code, _ = _call(ledger, lambda: stub.ForgetUser(pb.ForgetUserRequest(user_id=user_id), timeout=TIMEOUT))
    assert code in {Code.OK, Code.INVALID_ARGUMENT}
    if code == Code.OK:
        ledger.forget(user_id)


@cases("upsert")
@given(req=UPSERT)
def test_upsert_items(stub, ledger, req: pb.UpsertItemsRequest) -> None:
    code, _ = _call(ledger, lambda: stub.UpsertItems(req, timeout=TIMEOUT))
    assert code in {Code.OK, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED}


@cases("delete")
@given(req=DELETE)
def test_delete_items(stub, ledger, req: pb.DeleteItemsRequest) -> None:
    code, _ = _call(ledger, lambda: stub.DeleteItems(req, timeout=TIMEOUT))
    assert code in {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED}


@cases("import")
@given(batches=st.lists(st.lists(FEEDBACK, max_size=5), max_size=3))
def test_import_events(stub, ledger, batches: list[list[pb.SendFeedbackRequest]]) -> None:
    for e in (e for b in batches for e in b):
        if e.event_id == "ev-":
            e.event_id = f"ev-{uuid.uuid4()}"
    reqs = [pb.ImportEventsRequest(events=b) for b in batches]
    code, r = _call(ledger, lambda: stub.ImportEvents(iter(reqs), timeout=TIMEOUT))
    allowed = {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.ALREADY_EXISTS, Code.RESOURCE_EXHAUSTED}
    assert code in allowed
    if code == Code.OK:
        rows = [e for b in batches for e in b]
        assert r.received == len(rows) and r.stored + r.duplicates == len(rows)
        for e in rows:  # all or nothing on OK: every row is stored now (or was before)
            ledger.acked.setdefault(e.event_id, e.user_id)


@cases("metadata")
@given(
    meta=st.lists(st.tuples(META_KEY, META_VALUE), max_size=4),
    method=st.sampled_from(["Recommend", "ForgetUser"]),
)
def test_metadata(stub, ledger, meta: list[tuple[str, str]], method: str) -> None:
    md = [(k, v.encode() if k.endswith("-bin") else v) for k, v in meta]
    if method == "Recommend":
        fn = lambda: stub.Recommend(pb.RecommendRequest(user_id="alice"), metadata=md, timeout=TIMEOUT)  # noqa: E731
    else:
        fn = lambda: stub.ForgetUser(pb.ForgetUserRequest(user_id="nobody"), metadata=md, timeout=TIMEOUT)  # noqa: E731
    code, _ = _call(ledger, fn)
    # Headers over gRPC's limit get RESOURCE_EXHAUSTED from gRPC itself; the rest are ignored.
    assert code in {Code.OK, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED}


@cases("raw")
@given(data=st.one_of(*(st.tuples(st.just(m), mangled(s)) for m, s in MESSAGES.items())))
def test_raw_bytes(channel, ledger, data: tuple[str, bytes]) -> None:
    method, raw = data
    call = channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None)
    code, _ = _call(ledger, lambda: call(raw, timeout=TIMEOUT))
    # Bytes that still decode are a request like any other: a ForgetUser that decodes and
    # answers OK deleted its user's events. (Raw SendFeedbacks that store are not tracked.)
    if method == "ForgetUser" and code == Code.OK:
        ledger.forget(pb.ForgetUserRequest.FromString(raw).user_id)
    assert code in {
        Code.OK,
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.ALREADY_EXISTS,
        Code.RESOURCE_EXHAUSTED,
    }


# ------------------------------------------------------------ at the end


def test_zz_survived(gateway: Gateway, channel, stub, ledger: Ledger) -> None:
    assert gateway.proc is not None and gateway.proc.poll() is None, "the gateway died"
    health = health_pb2_grpc.HealthStub(channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    assert stub.Recommend(pb.RecommendRequest(user_id="fuzz-end", k=5), timeout=TIMEOUT).items
    # Every acknowledged event is in the store file (read beside the running server: WAL readers
    # see every committed transaction).
    with sqlite3.connect(f"file:{gateway.state}?mode=ro", uri=True) as db:
        stored = {row[0] for row in db.execute("SELECT event_id FROM events")}
    lost = [(e, ledger.acked[e]) for e in ledger.acked if e not in stored]
    assert not lost, f"{len(lost)} of {len(ledger.acked)} acknowledged events lost, e.g. {lost[:5]!r}"
    assert gateway.log is not None
    log = gateway.log.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    print(f"fuzz ({PROFILE}): {ledger.cases} cases, {len(ledger.acked)} acknowledged events all stored")
