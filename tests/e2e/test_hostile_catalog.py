"""Property tests for the live-catalog rpcs (UpsertItems, DeleteItems) against a real
`recgen serve`: every request, valid or hostile, gets OK or a precise status whose
message names the field; never INTERNAL/UNKNOWN/UNAVAILABLE; an acknowledged upsert
is recommendable at once and a delete removes the item; the worker survives."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procs import Gateway

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"),
]

Code = grpc.StatusCode
NEVER = {Code.INTERNAL, Code.UNKNOWN, Code.UNAVAILABLE}
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PIECES = [
    "x",
    "é",
    "😀",
    "\x00",
    "\x1f",
    "\x7f",
    "\x85",
    " ",
    "\n",
    "\t",
    "<|im_end|>",
    "'; DROP TABLE x; --",
]
TEXT = st.one_of(
    st.text(max_size=30),
    st.builds(lambda p, n: p * n, st.sampled_from(PIECES), st.integers(0, 5000)),
)
ITEM_ID = st.one_of(st.integers(1, 1700).map(str), st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True), TEXT)
CATEGORIES = st.lists(st.one_of(st.sampled_from(["Drama", "Horror", "Hostile"]), TEXT), max_size=40)
ITEM = st.builds(pb.CatalogItem, item_id=ITEM_ID, title=TEXT, text=TEXT, categories=CATEGORIES)


def _ok_text(s: str, limit: int, required: bool) -> bool:
    bad = any((ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F for c in s)
    return (s.strip() != "" or not required) and len(s) <= limit and not bad


def _ok_id(s: str, limit: int = 256) -> bool:
    n = len(s.encode())
    return 0 < n <= limit and not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in s)


def valid_item(it: pb.CatalogItem) -> bool:
    return (
        _ok_id(it.item_id)
        and _ok_text(it.title, 512, True)
        and _ok_text(it.text, 4096, False)
        and len(it.categories) <= 32
        and all(_ok_id(c, 64) for c in it.categories)
    )


@pytest.fixture(scope="module")
def stub(model_root: Path, tmp_path_factory: pytest.TempPathFactory):
    gw = Gateway(model_root, tmp_path_factory.mktemp("hostile-cat") / "s.db", "--workers", "1").start()
    try:
        with grpc.insecure_channel(gw.target) as ch:
            yield pbg.RecommenderStub(ch)
    finally:
        gw.stop(signal.SIGKILL)


@SETTINGS
@given(items=st.lists(ITEM, max_size=4))
def test_upsert_items(stub, items: list[pb.CatalogItem]) -> None:
    ids = [it.item_id for it in items]
    expect_ok = 1 <= len(items) and len(set(ids)) == len(ids) and all(valid_item(it) for it in items)
    try:
        r = stub.UpsertItems(pb.UpsertItemsRequest(items=items), timeout=60)
    except grpc.RpcError as e:
        assert e.code() not in NEVER, (e.code(), e.details())
        assert not expect_ok, (e.code(), e.details())
        assert e.code() == Code.INVALID_ARGUMENT and ("items" in e.details())
        return
    assert expect_ok
    assert r.added + r.updated == len(items) and r.catalog_seq > 0
    # Known at once, on the worker too: it has neighbours, and feedback on it is accepted.
    for n, it in enumerate(items):
        sim = stub.SimilarItems(pb.SimilarItemsRequest(item_id=it.item_id, k=3), timeout=10)
        assert len(sim.items) == 3 and it.item_id not in [i.item_id for i in sim.items]
        fb = pb.SendFeedbackRequest(
            event_id=f"hc-{r.catalog_seq}-{n}", user_id="hc", item_id=it.item_id, type=2
        )
        stub.SendFeedback(fb, timeout=10)


@SETTINGS
@given(ids=st.lists(ITEM_ID, max_size=4))
def test_delete_items(stub, ids: list[str]) -> None:
    try:
        r = stub.DeleteItems(pb.DeleteItemsRequest(item_ids=ids), timeout=60)
    except grpc.RpcError as e:
        assert e.code() not in NEVER, (e.code(), e.details())
        assert e.code() in (Code.INVALID_ARGUMENT, Code.NOT_FOUND), (e.code(), e.details())
        if e.code() == Code.INVALID_ARGUMENT:
            assert "item_ids" in e.details()
        return
    assert 1 <= len(ids) and all(_ok_id(i) for i in ids)
    assert 0 <= r.deleted <= len(set(ids))
    rec = stub.Recommend(pb.RecommendRequest(user_id="hostile-cat-cold", k=100), timeout=10)
    assert not set(ids) & {i.item_id for i in rec.items}
