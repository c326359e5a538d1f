"""Known users: the server serves the model that was trained to the users it was trained on.

A version exported from MovieLens-100K holds its 943 users' histories. Through a real
`recgen serve` (gateway, worker processes, SQLite), a training user's answer must be
exactly what the offline model gives that user (fold-in of the version's history, every
consumed item excluded), item for item, at any wall-clock time; ForgetUser hides it at
once and after a restart.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from recgen.core.foldin import FoldIn
from recgen.core.user_history import USERS_DIR, UserHistories
from recgen.repository import ModelRepository
from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procs import Gateway

pytestmark = pytest.mark.e2e

# Two request times 28 years apart at the same hour of day: the answer must not depend on
# the date (decay counts from the user's newest event, never from a clock).
TIMES = ("1998-03-01T20:00:00+00:00", "2026-12-06T21:00:00+01:00")


class Offline:
    """The trusted reference: the version's files, numpy fold-in, every item scored."""

    def __init__(self, root: Path) -> None:
        mv = ModelRepository(root).open()
        self.catalog = mv.catalog()
        self.ids = np.asarray([it.item_id for it in self.catalog])
        self.factors = np.load(mv.file("item_factors.npy"))
        mf = mv.manifest.params["mf"]
        self.alpha = float(mf["alpha"])
        self.fold = FoldIn(self.factors, float(mf["reg"]))
        self.users = UserHistories(mv.path / USERS_DIR)
        self.user_ids = [u.decode() for u in np.asarray(self.users.ids).tolist()]

    def top(self, user_id: str, k: int = 10, include_seen: bool = False) -> list[str]:
        u = self.users.index(user_id)
        assert u >= 0, user_id
        rows, conf = self.users.arrays.fold_in(u, self.alpha)
        scores = self.factors @ self.fold.user_vectors([(rows, conf)])[0]
        if not include_seen:
            scores[self.users.get(user_id).seen] = -np.inf
        order = np.argsort(-scores, kind="stable")[:k]
        return self.ids[order].tolist()

    def seen(self, user_id: str) -> set[str]:
        return set(self.ids[self.users.get(user_id).seen].tolist())


@pytest.fixture(scope="module")
def offline(model_root: Path) -> Offline:
    return Offline(model_root)


@pytest.fixture(scope="module")
def gateway(model_root: Path, tmp_path_factory: pytest.TempPathFactory):
    gw = Gateway(model_root, tmp_path_factory.mktemp("state") / "state.db", "--workers", "2").start()
    try:
        yield gw
    finally:
        gw.stop(signal.SIGKILL)


@pytest.fixture()
def stub(gateway: Gateway):
    with grpc.insecure_channel(gateway.target) as ch:
        yield pbg.RecommenderStub(ch)


def served(stub, user: str, when: str = "", **kw) -> list[str]:
    """The served top 10; `when`: the request's local time (the version may have learned an
    hour-of-day term, which then re-ranks: without a time, the answer is pure MF)."""
    req = pb.RecommendRequest(user_id=user, k=10, context=pb.Context(local_time=when), **kw)
    return [i.item_id for i in stub.Recommend(req, timeout=30).items]


def test_the_version_holds_every_training_user(offline: Offline) -> None:
    assert len(offline.users) == 943 and "196" in offline.user_ids
    assert offline.users.index("no-such-user") == -1


def test_served_equals_offline_for_200_training_users(stub, offline: Offline) -> None:
    """Offline = online, item for item; and the same at request times 28 years apart."""
    users = np.random.default_rng(0).choice(offline.user_ids, 200, replace=False).tolist()
    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(lambda u: served(stub, u), users))
        mismatched = [u for u, got in zip(users, answers, strict=True) if got != offline.top(u)]
        assert not mismatched, f"served != offline for users {mismatched[:5]}"
        then, now = (list(ex.map(lambda u, w=when: served(stub, u, w), users)) for when in TIMES)
    assert then == now
    assert all(not set(a) & offline.seen(u) for u, a in zip(users, now, strict=True))


def test_a_training_user_is_not_a_stranger(stub, offline: Offline) -> None:
    """User 196 gets a personalized list without anything 196 rated."""
    mine = served(stub, "196")
    assert len(mine) == 10 and not set(mine) & offline.seen("196")
    assert mine != served(stub, "a-stranger")


def test_include_seen_allows_re_consumption(stub, offline: Offline) -> None:
    heavy = max(offline.user_ids, key=lambda u: len(offline.seen(u)))
    again = served(stub, heavy, include_seen=True)
    assert again == offline.top(heavy, include_seen=True)
    assert set(again) & offline.seen(heavy), "a heavy user's best items include some they consumed"
    assert not set(served(stub, heavy)) & offline.seen(heavy)


def test_a_live_click_changes_a_training_users_next_answer(stub, offline: Offline) -> None:
    user = "42"
    before = served(stub, user)
    clicked = before[0]
    stub.SendFeedback(
        pb.SendFeedbackRequest(
            event_id="known-1", user_id=user, item_id=clicked, type=pb.FEEDBACK_TYPE_CLICK
        ),
        timeout=10,
    )
    after = served(stub, user)
    assert clicked not in after and after != before
    assert not set(after) & offline.seen(user)  # the version's history still counts


def test_forget_user_hides_the_version_history_at_once_and_after_a_restart(
    model_root: Path, tmp_path: Path, offline: Offline
) -> None:
    state = tmp_path / "state.db"
    gw = Gateway(model_root, state, "--workers", "1").start()
    try:
        with grpc.insecure_channel(gw.target) as ch:
            stub = pbg.RecommenderStub(ch)
            cold = served(stub, "a-stranger")
            assert served(stub, "13") == offline.top("13")
            stub.ForgetUser(pb.ForgetUserRequest(user_id="13"), timeout=10)
            assert served(stub, "13") == cold
    finally:
        gw.stop(signal.SIGKILL)
    gw = Gateway(model_root, state, "--workers", "1").start()
    try:
        with grpc.insecure_channel(gw.target) as ch:
            stub = pbg.RecommenderStub(ch)
            assert served(stub, "13") == cold
            assert served(stub, "14") == offline.top("14")  # only 13 was forgotten
    finally:
        gw.stop(signal.SIGKILL)
