"""Hot model swap under load through the public API: `recgen reload` behind the
quality gate, `recgen rollback`, and no failed request while workers switch."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from recgen.repository import ModelRepository
from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tests.model_versions import derive
from tools.harness.procs import ROOT, Gateway

pytestmark = pytest.mark.e2e

V2 = "20991231T000000Z-swap2"  # sorts after any real export: the newest
V3 = "20991231T000001Z-swap3"


class Load:
    """Closed-loop traffic from a few threads until stopped; every outcome is counted."""

    def __init__(self, target: str, threads: int = 3) -> None:
        self.target = target
        self.stop = threading.Event()
        self.ok: Counter[str] = Counter()  # model_version -> answers
        self.failed: list[str] = []
        self.texts = 0
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def _run(self, n: int) -> None:
        with grpc.insecure_channel(self.target) as ch:
            stub = pbg.RecommenderStub(ch)
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    if n == 0 and i % 5 == 0:  # a text stream now and then, on the old or new version
                        events = list(
                            stub.StreamRecommend(
                                pb.StreamRecommendRequest(request=pb.RecommendRequest(user_id=f"swap-{i}")),
                                timeout=30,
                            )
                        )
                        assert events[-1].HasField("final")
                        self.texts += 1
                        continue
                    r = stub.Recommend(pb.RecommendRequest(user_id=f"swap-{n}-{i % 7}"), timeout=10)
                    self.ok[r.model_version] += 1
                except (grpc.RpcError, AssertionError) as e:
                    self.failed.append(repr(e)[:300])

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def recgen_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recgen.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def served_by(stub: pbg.RecommenderStub) -> str:
    return stub.Recommend(pb.RecommendRequest(user_id="swap-probe"), timeout=10).model_version


def wait_serving(stub: pbg.RecommenderStub, version: str, timeout: float = 90.0) -> pb.RecommendResponse:
    """Until 8 answers in a row (both workers, least-loaded choice) come from `version`."""
    deadline = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < deadline:
        r = stub.Recommend(pb.RecommendRequest(user_id="swap-probe"), timeout=10)
        streak = streak + 1 if r.model_version == version else 0
        if streak >= 8:
            return r
        time.sleep(0.1)
    raise AssertionError(f"{version} not served by every worker within {timeout} s")


def test_reload_gate_and_rollback_under_load(model_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(model_root, root)
    v1 = ModelRepository(root).latest()
    gw = Gateway(root, tmp_path / "state.db", "--workers", "2").start()
    try:
        with grpc.insecure_channel(gw.target) as ch:
            stub = pbg.RecommenderStub(ch)
            before = wait_serving(stub, v1)
            with Load(gw.target) as load:
                # A new export appears: it does not serve by being newest (serve pinned v1)...
                derive(root, V2, reverse_popularity=True)
                time.sleep(3.0)
                assert served_by(stub) == v1
                # ...but once promoted, every worker swaps to it.
                r = recgen_cli("reload", "--models", str(root), "--version", V2)
                assert r.returncode == 0, r.stderr
                after = wait_serving(stub, V2)
                assert [i.item_id for i in after.items] != [i.item_id for i in before.items]
                # A clearly worse version is refused by the gate; the service keeps V2.
                derive(root, V3, hit_rate_scale=0.5)
                r = recgen_cli("reload", "--models", str(root), "--version", V3)
                assert r.returncode == 1 and "worse than serving" in r.stderr
                time.sleep(3.0)
                assert served_by(stub) == V2
                # Rollback returns to v1.
                r = recgen_cli("rollback", "--models", str(root))
                assert r.returncode == 0, r.stderr
                wait_serving(stub, v1)
                time.sleep(1.0)
            assert not load.failed, load.failed[:5]
            assert load.ok[v1] > 0 and load.ok[V2] > 0 and V3 not in load.ok
            assert load.texts > 0
    finally:
        gw.stop(signal.SIGKILL)
