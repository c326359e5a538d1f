"""RecommendBatch through a real `recgen serve` (gateway, 2 worker processes, SQLite): every
entry gets exactly the answer its own Recommend call gets, bad entries fail alone with their
own status, and more than 256 entries is INVALID_ARGUMENT for the whole call."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procs import Gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stub(model_root: Path, tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("batch") / "state.db"
    with Gateway(model_root, state, "--workers", "2").start() as gw, grpc.insecure_channel(gw.target) as ch:
        yield pbg.RecommenderStub(ch)


def test_each_entry_equals_its_own_recommend(stub) -> None:
    stub.SendFeedback(
        pb.SendFeedbackRequest(
            event_id="b-1", user_id="batch-live", item_id="50", type=pb.FEEDBACK_TYPE_CLICK
        )
    )
    users = ["1", "2", "42", "batch-live", "nobody-new", *[str(u) for u in range(100, 140)]]
    reqs = [pb.RecommendRequest(user_id=u, k=7) for u in users]
    reqs.append(pb.RecommendRequest(user_id="1", k=3, exclude_item_ids=["1"], include_categories=["Comedy"]))
    got = stub.RecommendBatch(pb.RecommendBatchRequest(requests=reqs), timeout=30)
    assert len(got.results) == len(reqs)
    ids = set()
    for r, res in zip(reqs, got.results, strict=True):
        assert res.code == 0, res.message
        alone = stub.Recommend(r, timeout=30)
        assert [(i.item_id, i.title) for i in res.response.items] == [
            (i.item_id, i.title) for i in alone.items
        ]
        assert [i.score for i in res.response.items] == pytest.approx(
            [i.score for i in alone.items], rel=1e-5
        )
        assert all(i.title for i in res.response.items)  # titles from the gateway's catalog
        assert res.response.model_version == alone.model_version
        ids.add(res.response.request_id)
    assert len(ids) == len(reqs)  # every entry its own request id
    assert "50" not in [i.item_id for i in got.results[3].response.items]  # the live click is seen


def test_bad_entries_fail_alone_with_their_own_status(stub) -> None:
    reqs = [
        pb.RecommendRequest(user_id="1", k=5),
        pb.RecommendRequest(user_id="", k=5),
        pb.RecommendRequest(user_id="2", k=1000),
        pb.RecommendRequest(user_id="3", k=5, explain=True),
        pb.RecommendRequest(user_id="4", k=5),
    ]
    got = stub.RecommendBatch(pb.RecommendBatchRequest(requests=reqs), timeout=30)
    codes = [r.code for r in got.results]
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert codes == [0, invalid, invalid, invalid, 0]
    assert "requests[1]" in got.results[1].message and "user_id" in got.results[1].message
    assert "k must be" in got.results[2].message
    assert "explain" in got.results[3].message
    assert len(got.results[0].response.items) == 5 and len(got.results[4].response.items) == 5
    assert not got.results[1].HasField("response")


def test_too_many_entries_is_invalid_argument_and_empty_is_empty(stub) -> None:
    reqs = [pb.RecommendRequest(user_id=str(u % 900 + 1)) for u in range(257)]
    with pytest.raises(grpc.RpcError) as e:
        stub.RecommendBatch(pb.RecommendBatchRequest(requests=reqs), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 256" in e.value.details()
    full = stub.RecommendBatch(pb.RecommendBatchRequest(requests=reqs[:256]), timeout=60)
    assert len(full.results) == 256 and all(r.code == 0 and len(r.response.items) == 10 for r in full.results)
    assert len(stub.RecommendBatch(pb.RecommendBatchRequest(), timeout=10).results) == 0
