"""A real worker process on a unix socket: batching, exactness, limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from export.data import iter_user_histories, load_movielens100k
from recgen.repository import ModelRepository
from recgen.worker.v1 import worker_pb2 as pb
from recgen.worker.v1 import worker_pb2_grpc as pbg
from tools.harness.procs import recgen, stop, wait_healthy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def worker(model_root: Path, tmp_path_factory: pytest.TempPathFactory):
    sock = tmp_path_factory.mktemp("sock") / "w.sock"
    proc = recgen(
        "worker",
        "--models",
        str(model_root),
        "--listen",
        f"unix:{sock}",
        "--threads",
        "1",
        "--max-delay-ms",
        "5",
    )
    try:
        wait_healthy(f"unix:{sock}", proc, "recgen.worker.v1.Worker")
        yield f"unix:{sock}"
    finally:
        stop(proc)


def reference_top_k(factors: np.ndarray, reg: float, alpha: float, items: list[int], k: int) -> list[int]:
    """Exact numpy MF, written independently: full-matrix iALS fold-in, all items scored."""
    n, d = factors.shape
    c = np.ones(n)
    p = np.zeros(n)
    c[items] = 1.0 + alpha
    p[items] = 1.0
    y = factors.astype(np.float64)
    u = np.linalg.solve(y.T @ (c[:, None] * y) + reg * np.eye(d), y.T @ (c * p))
    scores = y @ u
    scores[items] = -np.inf
    return list(np.argsort(-scores, kind="stable")[:k])


def test_concurrent_requests_are_batched_and_exact(worker: str, model_root: Path, wheels_dir: Path) -> None:
    mv = ModelRepository(model_root).open()
    factors = np.load(mv.file("item_factors.npy"))
    mf = mv.manifest.params["mf"]
    catalog = mv.catalog()
    ds = load_movielens100k(wheels_dir)
    users = []
    for _, rows in iter_user_histories(ds):
        items = list(dict.fromkeys(int(i) for i in ds.item[rows][::-1][:30]))  # newest first
        users.append(items)
        if len(users) == 48:
            break

    async def main():
        async with grpc.aio.insecure_channel(worker) as ch:
            stub = pbg.WorkerStub(ch)
            return await asyncio.gather(
                *(
                    stub.Rank(
                        pb.RankRequest(
                            k=10,
                            history=[pb.Interaction(item_id=catalog[i].item_id, weight=1.0) for i in items],
                        )
                    )
                    for items in users
                )
            )

    replies = asyncio.run(main())
    assert max(r.batch_size for r in replies) > 1, "concurrent requests were not batched"
    for items, r in zip(users, replies, strict=True):
        want = [catalog[i].item_id for i in reference_top_k(factors, mf["reg"], mf["alpha"], items, 10)]
        got = [it.item_id for it in r.items]
        assert got == want
        assert not set(got) & {catalog[i].item_id for i in items}  # seen never returned


def test_cold_start_exclusions_and_bad_k(worker: str) -> None:
    with grpc.insecure_channel(worker) as ch:
        stub = pbg.WorkerStub(ch)
        cold = stub.Rank(pb.RankRequest(k=5))
        assert len(cold.items) == 5
        top = cold.items[0].item_id
        again = stub.Rank(pb.RankRequest(k=5, exclude_item_ids=[top]))
        assert top not in [i.item_id for i in again.items]
        with pytest.raises(grpc.RpcError) as e:
            stub.Rank(pb.RankRequest(k=0))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_full_queue_answers_resource_exhausted(model_root: Path, tmp_path: Path) -> None:
    sock = tmp_path / "q.sock"
    proc = recgen(
        "worker",
        "--models",
        str(model_root),
        "--listen",
        f"unix:{sock}",
        "--threads",
        "1",
        "--max-batch",
        "1",
        "--max-queue",
        "2",
        "--max-delay-ms",
        "50",
    )
    try:
        wait_healthy(f"unix:{sock}", proc, "recgen.worker.v1.Worker")

        async def main():
            async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
                stub = pbg.WorkerStub(ch)
                calls = [
                    stub.Rank(pb.RankRequest(k=5, history=[pb.Interaction(item_id=str(i + 1), weight=1.0)]))
                    for i in range(40)
                ]
                return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(main())
        codes = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert codes and set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert any(not isinstance(r, Exception) for r in results)
    finally:
        stop(proc)
