"""`recgen serve` as a newcomer runs it: real gateway, worker processes, SQLite."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procs import Gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def state_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state") / "state.db"


@pytest.fixture(scope="module")
def gateway(model_root: Path, state_path: Path):
    gw = Gateway(model_root, state_path, "--workers", "2", "--max-new-tokens", "24").start()
    try:
        yield gw
    finally:
        gw.stop(signal.SIGKILL)


@pytest.fixture()
def stub(gateway: Gateway):
    with grpc.insecure_channel(gateway.target) as ch:
        yield pbg.RecommenderStub(ch)


def ids(resp: pb.RecommendResponse) -> list[str]:
    return [i.item_id for i in resp.items]


def feedback(
    stub, event_id: str, user: str, item: str, kind: int = pb.FEEDBACK_TYPE_CLICK, **kw
) -> pb.SendFeedbackResponse:
    return stub.SendFeedback(
        pb.SendFeedbackRequest(event_id=event_id, user_id=user, item_id=item, type=kind, **kw), timeout=10
    )


def test_recommend_cold_start_with_text(stub) -> None:
    r = stub.Recommend(pb.RecommendRequest(user_id="newcomer", explain=True), timeout=30)
    assert len(r.items) == 10 and r.request_id and r.model_version
    assert all(i.title for i in r.items)
    assert r.text_status in (pb.TEXT_STATUS_COMPLETE, pb.TEXT_STATUS_UNGROUNDED)
    if r.text_status == pb.TEXT_STATUS_COMPLETE:
        assert r.text


def test_text_in_a_locale_the_model_does_not_write_says_so(stub) -> None:
    """zh-* on a version whose llm.json declares no "zh": English text, and text_reason says so
    (the zh path itself: tests/unit/test_explain.py)."""
    r = stub.Recommend(
        pb.RecommendRequest(user_id="newcomer-zh", explain=True, context=pb.Context(locale="zh-CN")),
        timeout=30,
    )
    assert r.text_status in (pb.TEXT_STATUS_COMPLETE, pb.TEXT_STATUS_UNGROUNDED)
    assert r.text.startswith("Try "), r.text  # the English opening
    assert r.text_reason.endswith("answered in English: this model version does not write Chinese")
    en = stub.Recommend(pb.RecommendRequest(user_id="newcomer-en", explain=True), timeout=30)
    assert "English" not in en.text_reason


def test_stream_sends_items_then_pieces_then_final(stub) -> None:
    events = list(
        stub.StreamRecommend(
            pb.StreamRecommendRequest(request=pb.RecommendRequest(user_id="streamer", k=3)), timeout=30
        )
    )
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "items" and kinds[-1] == "final"
    assert set(kinds[1:-1]) <= {"text_piece"}
    pieces = [e.text_piece for e in events[1:-1]]
    assert len(events[0].items.items) == 3
    final = events[-1].final
    assert "".join(pieces) == final.text
    if final.text_status == pb.TEXT_STATUS_COMPLETE:
        assert len(pieces) >= 2, "text should arrive in several pieces"


def test_feedback_changes_next_answer(stub) -> None:
    user = "fan"
    before = ids(stub.Recommend(pb.RecommendRequest(user_id=user, k=10)))
    assert feedback(stub, "fan-1", user, "50").stored  # Star Wars (1977)
    assert feedback(stub, "fan-2", user, "172").stored  # Empire Strikes Back
    after = ids(stub.Recommend(pb.RecommendRequest(user_id=user, k=10)))
    assert after != before
    assert "50" not in after and "172" not in after  # seen items are not recommended again
    # DISMISS: the top item disappears from the next answer, for good.
    top = after[0]
    feedback(stub, "fan-3", user, top, pb.FEEDBACK_TYPE_DISMISS)
    assert top not in ids(stub.Recommend(pb.RecommendRequest(user_id=user, k=20)))


def test_duplicate_event_stored_once_and_conflict(stub, state_path: Path) -> None:
    assert feedback(stub, "dup-1", "dupuser", "1").stored is True
    assert feedback(stub, "dup-1", "dupuser", "1").stored is False
    with pytest.raises(grpc.RpcError) as e:
        feedback(stub, "dup-1", "dupuser", "2")
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with sqlite3.connect(state_path) as db:
        n = db.execute("SELECT COUNT(*) FROM events WHERE event_id='dup-1'").fetchone()[0]
    assert n == 1


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.RecommendRequest(user_id=""), "user_id"),
        (pb.RecommendRequest(user_id="x" * 300), "user_id"),
        (pb.RecommendRequest(user_id="u", k=-1), "k must be"),
        (pb.RecommendRequest(user_id="u", k=101), "k must be"),
        (pb.RecommendRequest(user_id="u", exclude_item_ids=["1"] * 1001), "exclude_item_ids"),
        (pb.RecommendRequest(user_id="u", context=pb.Context(local_time="yesterday")), "context.local_time"),
    ],
)
def test_bad_recommend_input(stub, request_, field: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub.Recommend(request_, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in e.value.details()


def test_bad_feedback_input(stub) -> None:
    with pytest.raises(grpc.RpcError) as e:
        feedback(stub, "bad-1", "u", "1", kind=42)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "type" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        feedback(stub, "bad-2", "u", "1", kind=pb.FEEDBACK_TYPE_RATE, value=9)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "value" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        feedback(stub, "bad-3", "u", "no-such-item")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_and_reflection(gateway: Gateway) -> None:
    with grpc.insecure_channel(gateway.target) as ch:
        h = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="recgen.v1.Recommender"), timeout=5
        )
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        (resp,) = list(
            refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
        names = {s.name for s in resp.list_services_response.service}
        assert "recgen.v1.Recommender" in names and "grpc.health.v1.Health" in names


def test_impressions_logged(stub, state_path: Path) -> None:
    r = stub.Recommend(pb.RecommendRequest(user_id="imp", k=4))
    time.sleep(0.5)  # impressions are written in groups every 0.2 s
    with sqlite3.connect(state_path) as db:
        row = db.execute(
            "SELECT user_id, items, model_version FROM impressions WHERE request_id=?", (r.request_id,)
        ).fetchone()
    assert row is not None and row[0] == "imp" and row[2] == r.model_version
    assert all(i in row[1] for i in ids(r))


def test_feedback_survives_sigkill_and_sigterm_exits_zero(model_root: Path, tmp_path: Path) -> None:
    state = tmp_path / "s.db"
    gw = Gateway(model_root, state, "--workers", "1").start()
    try:
        with grpc.insecure_channel(gw.target) as ch:
            s = pbg.RecommenderStub(ch)
            top = ids(s.Recommend(pb.RecommendRequest(user_id="k", k=5)))[0]
            feedback(s, "k-1", "k", top, pb.FEEDBACK_TYPE_DISMISS)
            feedback(s, "k-2", "k", "50")
    finally:
        gw.stop(signal.SIGKILL)
    gw = Gateway(model_root, state, "--workers", "1").start()
    try:
        with grpc.insecure_channel(gw.target) as ch:
            s = pbg.RecommenderStub(ch)
            after = ids(s.Recommend(pb.RecommendRequest(user_id="k", k=20)))
            assert top not in after and "50" not in after
    finally:
        code = gw.stop(signal.SIGTERM)
    assert code == 0


def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        out.update(int(c) for c in children)
    return out


def test_killed_worker_is_survived_and_restarted(model_root: Path, tmp_path: Path) -> None:
    gw = Gateway(model_root, tmp_path / "s.db", "--workers", "2").start()
    try:
        assert gw.proc is not None
        workers = _children(gw.proc.pid)
        assert len(workers) == 2
        for pid in workers:  # worker sockets: 0600 in a 0700 directory of this user
            argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            sock = Path(argv[argv.index("--listen") + 1].removeprefix("unix:"))
            assert sock.stat().st_mode & 0o777 == 0o600
            assert sock.parent.stat().st_mode & 0o777 == 0o700
        victim = min(workers)
        with grpc.insecure_channel(gw.target) as ch:
            s = pbg.RecommenderStub(ch)
            failures = 0
            for i in range(60):
                if i == 10:
                    os.kill(victim, signal.SIGKILL)
                try:
                    s.Recommend(pb.RecommendRequest(user_id=f"chaos-{i % 7}", k=5), timeout=10)
                except grpc.RpcError:
                    failures += 1
                time.sleep(0.02)
            assert failures == 0, "a Recommend in flight on the dead worker must be retried"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # restarted: two live workers again
                now = _children(gw.proc.pid)
                if len(now) == 2 and victim not in now:
                    break
                time.sleep(0.2)
            assert len(now) == 2 and victim not in now
    finally:
        assert gw.stop(signal.SIGTERM) == 0


def test_similar_items(stub) -> None:
    r = stub.SimilarItems(pb.SimilarItemsRequest(item_id="172", k=5), timeout=10)  # Empire Strikes Back
    got = ids(r)
    assert len(got) == 5 and "172" not in got and r.model_version
    assert [i.score for i in r.items] == sorted((i.score for i in r.items), reverse=True)
    with pytest.raises(grpc.RpcError) as e:
        stub.SimilarItems(pb.SimilarItemsRequest(item_id="no-such-item"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_category_filters(stub, model_root: Path) -> None:
    from recgen.repository import ModelRepository

    cats = {it.item_id: set(it.categories) for it in ModelRepository(model_root).open().catalog()}
    feedback(stub, "cat-1", "catfan", "50")
    for user in ("catfan", "cat-cold"):  # warm (fold-in) and cold-start paths
        only = stub.Recommend(pb.RecommendRequest(user_id=user, k=10, include_categories=["Horror"]))
        assert len(only.items) == 10 and all("Horror" in cats[i] for i in ids(only))
        no = stub.Recommend(pb.RecommendRequest(user_id=user, k=10, exclude_categories=["Drama", "Comedy"]))
        assert len(no.items) == 10
        assert all(not ({"Drama", "Comedy"} & cats[i]) for i in ids(no))
