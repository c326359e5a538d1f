"""The live catalog through the public API: UpsertItems / DeleteItems on a real
`recgen serve` (gateway, 2 worker processes, SQLite), across worker and gateway
restarts."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procs import Gateway

pytestmark = pytest.mark.e2e

NEW_CATEGORY = "LiveTestCategory"


@pytest.fixture(scope="module")
def state_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live-state") / "state.db"


@pytest.fixture(scope="module")
def gateway(model_root: Path, state_path: Path):
    gw = Gateway(model_root, state_path, "--workers", "2").start()
    try:
        yield gw
    finally:
        gw.stop(signal.SIGKILL)


@pytest.fixture()
def stub(gateway: Gateway):
    with grpc.insecure_channel(gateway.target) as ch:
        yield pbg.RecommenderStub(ch)


def ids(resp) -> list[str]:
    return [i.item_id for i in resp.items]


def item(
    item_id: str, title: str, cats: tuple[str, ...] = (NEW_CATEGORY, "Drama"), text: str = ""
) -> pb.CatalogItem:
    return pb.CatalogItem(item_id=item_id, title=title, text=text, categories=list(cats))


def _child_pids(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def test_upserted_item_is_recommendable_in_the_very_next_request(stub) -> None:
    r = stub.UpsertItems(
        pb.UpsertItemsRequest(
            items=[item("live-1", "Zorblax Returns (2026)", text="A quiet drama about a lighthouse keeper.")]
        ),
        timeout=60,
    )
    assert (r.added, r.updated) == (1, 0) and r.catalog_seq >= 1
    # The very next request, on whichever worker: only the new item is in its category.
    for _ in range(4):  # 2 workers, least-loaded choice: both get asked
        rec = stub.Recommend(
            pb.RecommendRequest(user_id="live-user-a", include_categories=[NEW_CATEGORY]), timeout=10
        )
        assert ids(rec) == ["live-1"] and rec.items[0].title == "Zorblax Returns (2026)"
    # The gateway knows it too: feedback on it is accepted, and it has neighbours.
    fb = stub.SendFeedback(
        pb.SendFeedbackRequest(event_id="live-ev-1", user_id="live-user-a", item_id="live-1", type=2),
        timeout=10,
    )
    assert fb.stored
    sim = stub.SimilarItems(pb.SimilarItemsRequest(item_id="live-1", k=5), timeout=10)
    assert len(sim.items) == 5 and "live-1" not in ids(sim)


def test_upsert_of_an_existing_item_changes_title_and_categories(stub) -> None:
    cold = stub.Recommend(pb.RecommendRequest(user_id="live-cold-1"), timeout=10)
    top = cold.items[0]
    r = stub.UpsertItems(
        pb.UpsertItemsRequest(items=[item(top.item_id, top.title + " [Remastered]", ("LiveRemaster",))]),
        timeout=60,
    )
    assert (r.added, r.updated) == (0, 1)
    again = stub.Recommend(pb.RecommendRequest(user_id="live-cold-2"), timeout=10)
    assert again.items[0].item_id == top.item_id  # learned factors and popularity kept
    assert again.items[0].title == top.title + " [Remastered]"
    only = stub.Recommend(
        pb.RecommendRequest(user_id="live-cold-3", include_categories=["LiveRemaster"]), timeout=10
    )
    assert ids(only) == [top.item_id]


def test_deleted_item_never_comes_back(stub) -> None:
    cold = stub.Recommend(pb.RecommendRequest(user_id="live-cold-4", k=5), timeout=10)
    gone = cold.items[1].item_id
    warm_user = "live-user-b"
    for n, it in enumerate(cold.items[2:5]):
        stub.SendFeedback(
            pb.SendFeedbackRequest(event_id=f"live-b-{n}", user_id=warm_user, item_id=it.item_id, type=2),
            timeout=10,
        )
    r = stub.DeleteItems(pb.DeleteItemsRequest(item_ids=[gone]), timeout=60)
    assert r.deleted == 1
    for user in ("live-cold-5", warm_user, "live-user-a"):
        for _ in range(2):
            rec = stub.Recommend(pb.RecommendRequest(user_id=user, k=100), timeout=10)
            assert gone not in ids(rec), user
    sim = stub.SimilarItems(pb.SimilarItemsRequest(item_id=cold.items[0].item_id, k=100), timeout=10)
    assert gone not in ids(sim)
    with pytest.raises(grpc.RpcError) as e:
        stub.SimilarItems(pb.SimilarItemsRequest(item_id=gone, k=5), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.SendFeedback(
            pb.SendFeedbackRequest(event_id="live-gone", user_id=warm_user, item_id=gone, type=2), timeout=10
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # Deleting again is accepted and counts nothing.
    assert stub.DeleteItems(pb.DeleteItemsRequest(item_ids=[gone]), timeout=60).deleted == 0
    # Upserting it again brings it back.
    back = stub.UpsertItems(
        pb.UpsertItemsRequest(items=[item(gone, "Back again", ("LiveBack",))]), timeout=60
    )
    assert back.added == 1  # it was not in the catalog any more
    only = stub.Recommend(
        pb.RecommendRequest(user_id="live-cold-6", include_categories=["LiveBack"]), timeout=10
    )
    assert ids(only) == [gone]
    assert stub.DeleteItems(pb.DeleteItemsRequest(item_ids=[gone]), timeout=60).deleted == 1


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (pb.UpsertItemsRequest(), grpc.StatusCode.INVALID_ARGUMENT, "items must hold"),
        (
            pb.UpsertItemsRequest(items=[item("dup", "A"), item("dup", "B")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "appears twice",
        ),
        (
            pb.UpsertItemsRequest(items=[item("x-1", "  ")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "items[0].title",
        ),
        (
            pb.UpsertItemsRequest(items=[item("x-2", "T", text="x" * 5000)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "items[0].text",
        ),
        (pb.DeleteItemsRequest(), grpc.StatusCode.INVALID_ARGUMENT, "item_ids must hold"),
        (pb.DeleteItemsRequest(item_ids=["live-1", "never-was"]), grpc.StatusCode.NOT_FOUND, "never-was"),
    ],
)
def test_bad_catalog_requests(stub, request_, code, words: str) -> None:
    call = stub.UpsertItems if isinstance(request_, pb.UpsertItemsRequest) else stub.DeleteItems
    with pytest.raises(grpc.RpcError) as e:
        call(request_, timeout=30)
    assert e.value.code() == code and words in e.value.details()


def test_unknown_delete_deletes_nothing(stub) -> None:
    rec = stub.Recommend(
        pb.RecommendRequest(user_id="live-user-e", include_categories=[NEW_CATEGORY]), timeout=10
    )
    assert ids(rec) == ["live-1"]  # the failed DeleteItems above named live-1 too


def test_catalog_survives_worker_and_gateway_restarts(
    gateway: Gateway, model_root: Path, state_path: Path
) -> None:
    assert gateway.proc is not None
    workers = _child_pids(gateway.proc.pid)
    assert len(workers) >= 2
    os.kill(workers[0], signal.SIGKILL)  # restarted by the gateway, synced before rotation
    time.sleep(1.0)
    with grpc.insecure_channel(gateway.target) as ch:
        stub = pbg.RecommenderStub(ch)
        deadline = time.monotonic() + 120
        asked = 0
        while time.monotonic() < deadline and asked < 20:
            try:
                rec = stub.Recommend(
                    pb.RecommendRequest(user_id="live-user-c", include_categories=[NEW_CATEGORY]), timeout=10
                )
            except grpc.RpcError as e:  # only while both workers were briefly unavailable
                assert e.code() == grpc.StatusCode.UNAVAILABLE
                time.sleep(0.5)
                continue
            assert ids(rec) == ["live-1"]
            asked += 1
            time.sleep(0.2)
    gateway.stop(signal.SIGKILL)
    gw2 = Gateway(model_root, state_path, "--workers", "1").start()
    try:
        with grpc.insecure_channel(gw2.target) as ch:
            stub = pbg.RecommenderStub(ch)
            rec = stub.Recommend(
                pb.RecommendRequest(user_id="live-user-d", include_categories=[NEW_CATEGORY]), timeout=10
            )
            assert ids(rec) == ["live-1"]
            fb = stub.SendFeedback(
                pb.SendFeedbackRequest(event_id="live-ev-2", user_id="live-user-d", item_id="live-1", type=2),
                timeout=10,
            )
            assert fb.stored
    finally:
        gw2.stop(signal.SIGKILL)
