"""Sharded catalogs end to end: a real `recgen serve --workers 2 --shards 2` answers exactly as a
real `recgen serve --workers 1` on the same model version (items and scores, warm, cold,
filtered, dismissed, similar items), and a shard whose only worker is SIGKILLed answers
UNAVAILABLE naming the shard until the gateway has restarted it."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procs import Gateway

pytestmark = pytest.mark.e2e

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
LOCAL_TIME = NOW.isoformat()  # the same request time on both gateways: the same decay


@pytest.fixture(scope="module")
def gateways(model_root: Path, tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("sharded")
    single = Gateway(model_root, d / "single.db", "--workers", "1", "--max-new-tokens", "8").start()
    try:
        sharded = Gateway(
            model_root, d / "sharded.db", "--workers", "2", "--shards", "2", "--max-new-tokens", "8"
        ).start()
        try:
            with grpc.insecure_channel(single.target) as a, grpc.insecure_channel(sharded.target) as b:
                yield pbg.RecommenderStub(a), pbg.RecommenderStub(b), sharded
        finally:
            sharded.stop(signal.SIGKILL)
    finally:
        single.stop(signal.SIGKILL)


def feed(stubs, user: str, item: str, kind: pb.FeedbackType, n: int) -> None:
    ts = (NOW - dt.timedelta(hours=1, minutes=n)).isoformat()
    for s in stubs:
        r = s.SendFeedback(
            pb.SendFeedbackRequest(
                event_id=f"{user}-{n}", user_id=user, item_id=item, type=kind, timestamp=ts
            ),
            timeout=10,
        )
        assert r.stored


def ask(stub, user: str, k: int = 10, **kw) -> pb.RecommendResponse:
    ctx = pb.Context(local_time=LOCAL_TIME, device="mobile")
    return stub.Recommend(pb.RecommendRequest(user_id=user, k=k, context=ctx, **kw), timeout=30)


def assert_same(a: pb.RecommendResponse | pb.SimilarItemsResponse, b) -> None:
    assert [i.item_id for i in a.items] == [i.item_id for i in b.items]
    np.testing.assert_allclose([i.score for i in a.items], [i.score for i in b.items], rtol=1e-5, atol=1e-5)
    assert a.model_version == b.model_version


def test_recommend_and_similar_match_the_single_index(gateways) -> None:
    single, sharded, _ = gateways
    rng = np.random.default_rng(5)
    users = [f"shard-user-{u}" for u in range(20)]
    for u, user in enumerate(users[5:]):  # the first 5 stay cold
        for n, item in enumerate(
            rng.choice(np.arange(1, 1683), size=int(rng.integers(1, 12)), replace=False)
        ):
            feed([single, sharded], user, str(item), pb.FEEDBACK_TYPE_CLICK, n)
        if u % 5 == 0:  # a dismissal: the item leaves, its neighbours sink (merged exactly)
            feed([single, sharded], user, "50", pb.FEEDBACK_TYPE_DISMISS, 99)
    checked = 0
    for i, user in enumerate(users):
        kw = {}
        if i % 4 == 1:
            kw = {"include_categories": ["Drama"]}
        elif i % 4 == 2:
            kw = {"exclude_categories": ["Comedy", "Action"]}
        k = [10, 3, 60][i % 3]
        a, b = ask(single, user, k, **kw), ask(sharded, user, k, **kw)
        assert len(a.items) == k
        assert_same(a, b)
        checked += 1
    assert checked == 20
    for item in ("1", "50", "172", "1000"):
        req = pb.SimilarItemsRequest(item_id=item, k=20)
        assert_same(single.SimilarItems(req, timeout=10), sharded.SimilarItems(req, timeout=10))


def _workers(pid: int) -> dict[str, int]:
    """The gateway's worker processes by their --shard."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for c in (task / "children").read_text().split():
            argv = Path(f"/proc/{c}/cmdline").read_text().split("\0")
            out[argv[argv.index("--shard") + 1]] = int(c)
    return out


def test_a_shard_without_a_worker_is_unavailable_until_restarted(gateways) -> None:
    single, sharded, gw = gateways
    assert gw.proc is not None
    workers = _workers(gw.proc.pid)
    assert sorted(workers) == ["0/2", "1/2"]
    before = ask(sharded, "shard-user-7")
    os.kill(workers["1/2"], signal.SIGKILL)
    with pytest.raises(grpc.RpcError) as e:
        ask(sharded, "shard-user-7")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shard 1/2" in (e.value.details() or ""), e.value.details()
    deadline = time.monotonic() + 120
    while True:  # the supervisor restarts it; then the whole answer is back
        try:
            after = ask(sharded, "shard-user-7")
            break
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            assert time.monotonic() < deadline, "shard 1/2 did not come back"
            time.sleep(0.5)
    assert_same(before, after)
    assert_same(ask(single, "shard-user-7"), after)
    assert _workers(gw.proc.pid)["1/2"] != workers["1/2"]
