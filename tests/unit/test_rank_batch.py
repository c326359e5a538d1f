"""The gateway's RankRows coalescing against a real worker servicer (real model,
real gRPC server on a real socket): concurrent rank requests share packed RPCs, each
gets the same answer as its own Rank call, and errors stay per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from recgen.config import WorkerConfig
from recgen.worker.v1 import worker_pb2 as wpb
from recgen.worker.v1 import worker_pb2_grpc
from server.rank_batch import RankBatcher
from server.ranked import Ranked, rank_request
from server.workers import Worker
from worker.metrics import Metrics
from worker.model import LoadedModel
from worker.service import WorkerService


@pytest.fixture(scope="module")
def model(model_root: Path):
    m = LoadedModel.load(model_root, None, WorkerConfig(threads=1), Metrics())
    yield m
    m.close()


def request(user: int, k: int = 5) -> wpb.RankRow:
    ids = [str(user * 7 % 1600 + j + 1) for j in range(3)]
    return wpb.RankRow(history_item_ids=ids, history_weights=[1.0] * 3, history_timestamps=[0.0] * 3, k=k)


async def with_worker(model: LoadedModel, body) -> None:  # type: ignore[no-untyped-def]
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(
        WorkerService(model, WorkerConfig(threads=1), Metrics()), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    w = Worker(name="w0", address=f"127.0.0.1:{port}", local=False)
    w.connect()
    try:
        await body(w, server)
    finally:
        await w.close_channel()
        await server.stop(None)


def test_concurrent_calls_share_rpcs_and_get_their_own_answers(model) -> None:
    async def body(w: Worker, server: grpc.aio.Server) -> None:
        assert w.stub is not None
        alone = [await w.stub.Rank(rank_request(request(u)), timeout=10) for u in range(12)]
        batcher = RankBatcher(max_in_flight=1)
        together = await asyncio.gather(*(batcher.rank(w, request(u), 10.0) for u in range(12)))
        assert [r.item_ids for r in together] == [[i.item_id for i in r.items] for r in alone]
        got = [s for r in together for s in r.scores]
        assert got == pytest.approx([i.score for r in alone for i in r.items], rel=1e-5)
        assert batcher.requests == 12 and batcher.batches < 12
        assert max(r.batch_size for r in together) > 1

    asyncio.run(with_worker(model, body))


def test_a_bad_request_fails_alone_with_its_own_status(model) -> None:
    async def body(w: Worker, server: grpc.aio.Server) -> None:
        batcher = RankBatcher()
        good, bad = await asyncio.gather(
            batcher.rank(w, request(1), 10.0), batcher.rank(w, request(2, k=0), 10.0), return_exceptions=True
        )
        assert batcher.batches == 1
        assert isinstance(good, Ranked) and len(good.item_ids) == 5 and good.titles is None
        assert isinstance(bad, grpc.aio.AioRpcError)
        assert (
            bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "k must be in 1..1000, got 0" in bad.details()
        )

    asyncio.run(with_worker(model, body))


def test_an_unreachable_worker_fails_every_request_with_unavailable(model) -> None:
    async def body(w: Worker, server: grpc.aio.Server) -> None:
        await server.stop(None)
        batcher = RankBatcher()
        out = await asyncio.gather(
            *(batcher.rank(w, request(u), 5.0) for u in range(3)), return_exceptions=True
        )
        assert all(isinstance(e, grpc.aio.AioRpcError) for e in out)
        assert {e.code() for e in out} == {grpc.StatusCode.UNAVAILABLE}  # type: ignore[union-attr]

    asyncio.run(with_worker(model, body))


def test_a_worker_without_rank_batch_gets_plain_rank_calls(model) -> None:
    class OldWorker(worker_pb2_grpc.WorkerServicer):  # a worker from before RankRows
        def __init__(self) -> None:
            self.real = WorkerService(model, WorkerConfig(threads=1), Metrics())

        async def Rank(self, req, context):  # type: ignore[no-untyped-def]
            return await self.real.Rank(req, context)

    async def run() -> None:
        server = grpc.aio.server()
        worker_pb2_grpc.add_WorkerServicer_to_server(OldWorker(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        w = Worker(name="old", address=f"127.0.0.1:{port}", local=False)
        w.connect()
        try:
            batcher = RankBatcher()
            first = await asyncio.gather(*(batcher.rank(w, request(u), 10.0) for u in range(3)))
            second = await batcher.rank(w, request(3), 10.0)
            assert all(len(r.item_ids) == 5 and r.titles and all(r.titles) for r in [*first, second])
            assert batcher.batches == 1  # tried once, then plain Rank calls
        finally:
            await w.close_channel()
            await server.stop(None)

    asyncio.run(run())


def test_a_large_batch_ranks_as_one_unit_like_its_rows_alone(model) -> None:
    # More rows than the worker ranks on its event loop (INLINE_ROWS): the model thread's path.
    async def body(w: Worker, server: grpc.aio.Server) -> None:
        assert w.stub is not None
        rows = [request(u, k=4) for u in range(40)]
        big = await w.stub.RankRows(wpb.RankRowsRequest(rows=rows), timeout=30)
        assert big.batch_size == 40 and list(big.codes) == [0] * 40
        small = [await w.stub.RankRows(wpb.RankRowsRequest(rows=[r]), timeout=10) for r in rows[:5]]
        for i, one in enumerate(small):
            assert one.batch_size == 1
            assert list(big.item_ids[big.offsets[i] : big.offsets[i + 1]]) == list(one.item_ids)

    asyncio.run(with_worker(model, body))
