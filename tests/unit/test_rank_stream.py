"""The gateway's rank batches on one long-lived RankStream per worker (server/rank_batch.py)
against a real worker servicer (real model, real gRPC server on a real socket): batches share
the stream and get the answers their unary RankRows would have; a batch past its deadline
fails alone with DEADLINE_EXCEEDED and the stream goes on; a broken or idle stream is replaced;
a worker without RankStream gets RankRows calls; a draining worker ends its idle streams."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

import server.rank_batch as rank_batch
from recgen.config import WorkerConfig
from recgen.worker.v1 import worker_pb2 as wpb
from recgen.worker.v1 import worker_pb2_grpc
from server.rank_batch import RankBatcher
from server.ranked import Ranked
from server.workers import Worker
from worker.metrics import Metrics
from worker.model import LoadedModel
from worker.service import WorkerService


@pytest.fixture(scope="module")
def model(model_root: Path):
    m = LoadedModel.load(model_root, None, WorkerConfig(threads=1), Metrics())
    yield m
    m.close()


def row(user: int, k: int = 5) -> wpb.RankRow:
    ids = [str(user * 7 % 1600 + j + 1) for j in range(3)]
    return wpb.RankRow(history_item_ids=ids, history_weights=[1.0] * 3, history_timestamps=[0.0] * 3, k=k)


class Counting(WorkerService):
    """The real servicer, counting the calls the gateway made and able to stall a batch."""

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model, WorkerConfig(threads=1), Metrics())
        self.streams = self.unary = 0
        self.stall_s = 0.0

    async def RankStream(self, request_iterator, context):  # type: ignore[no-untyped-def]
        self.streams += 1
        async for reply in super().RankStream(request_iterator, context):
            if self.stall_s:
                await asyncio.sleep(self.stall_s)
            yield reply

    async def RankRows(self, request, context):  # type: ignore[no-untyped-def]
        self.unary += 1
        return await super().RankRows(request, context)


async def serve(servicer: worker_pb2_grpc.WorkerServicer) -> tuple[grpc.aio.Server, Worker]:
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    w = Worker(name="w0", address=f"127.0.0.1:{port}", local=False)
    w.connect()
    return server, w


def test_batches_share_one_stream_and_answer_as_rank_rows(model) -> None:
    async def run() -> None:
        svc = Counting(model)
        server, w = await serve(svc)
        try:
            assert w.stub is not None
            alone = [await w.stub.RankRows(wpb.RankRowsRequest(rows=[row(u)]), timeout=10) for u in range(10)]
            batcher = RankBatcher()
            first = await asyncio.gather(*(batcher.rank(w, row(u), 10.0) for u in range(5)))
            rest = [await batcher.rank(w, row(u), 10.0) for u in range(5, 10)]
            got = [*first, *rest]
            assert [r.item_ids for r in got] == [list(a.item_ids) for a in alone]
            assert [r.scores for r in got] == [list(a.scores) for a in alone]
            assert svc.streams == 1 and svc.unary == 10  # the 10 unary calls above, none from the batcher
            assert batcher.batches >= 6  # one batch for the 5 together (or a few), then 5 alone
            await batcher.close()
        finally:
            await w.close_channel()
            await server.stop(None)

    asyncio.run(run())


def test_a_batch_past_its_deadline_fails_alone_and_the_stream_goes_on(model) -> None:
    async def run() -> None:
        svc = Counting(model)
        server, w = await serve(svc)
        try:
            batcher = RankBatcher()
            svc.stall_s = 0.5
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await batcher.rank(w, row(1), 0.1)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            svc.stall_s = 0.0
            ok = await batcher.rank(w, row(2), 10.0)  # answered after the late one is dropped
            assert isinstance(ok, Ranked) and len(ok.item_ids) == 5
            assert svc.streams == 1
            await batcher.close()
        finally:
            await w.close_channel()
            await server.stop(None)

    asyncio.run(run())


def test_a_broken_stream_fails_with_unavailable_and_the_next_batch_reopens(model) -> None:
    async def run() -> None:
        svc = Counting(model)
        server, w = await serve(svc)
        try:
            batcher = RankBatcher()
            assert isinstance(await batcher.rank(w, row(1), 10.0), Ranked)
            svc.stall_s = 1.0
            pending = asyncio.ensure_future(batcher.rank(w, row(2), 10.0))
            await asyncio.sleep(0.2)
            for lane in batcher._lanes.values():  # what a dead worker's transport does to the call
                assert lane.stream is not None
                lane.stream.call.cancel()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await pending
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # retried elsewhere by call_worker
            svc.stall_s = 0.0
            assert isinstance(await batcher.rank(w, row(3), 10.0), Ranked)
            assert svc.streams == 2
            await batcher.close()
        finally:
            await w.close_channel()
            await server.stop(None)

    asyncio.run(run())


def test_an_idle_stream_is_closed_and_reopened_on_demand(model, monkeypatch) -> None:
    monkeypatch.setattr(rank_batch, "IDLE_CLOSE_S", 0.1)

    async def run() -> None:
        svc = Counting(model)
        server, w = await serve(svc)
        try:
            batcher = RankBatcher()
            await batcher.rank(w, row(1), 10.0)
            await asyncio.sleep(0.4)
            (lane,) = batcher._lanes.values()
            assert lane.stream is not None and lane.stream.closed
            assert not svc._streams  # the worker's side of it has ended too
            assert isinstance(await batcher.rank(w, row(2), 10.0), Ranked)
            assert svc.streams == 2
            await batcher.close()
        finally:
            await w.close_channel()
            await server.stop(None)

    asyncio.run(run())


def test_a_worker_without_rank_stream_gets_rank_rows_calls(model) -> None:
    class Older(worker_pb2_grpc.WorkerServicer):  # RankRows, but from before RankStream
        def __init__(self) -> None:
            self.real = WorkerService(model, WorkerConfig(threads=1), Metrics())
            self.calls = 0

        async def RankRows(self, req, context):  # type: ignore[no-untyped-def]
            self.calls += 1
            return await self.real.RankRows(req, context)

    async def run() -> None:
        old = Older()
        server, w = await serve(old)
        try:
            batcher = RankBatcher()
            first = await asyncio.gather(*(batcher.rank(w, row(u), 10.0) for u in range(3)))
            second = await batcher.rank(w, row(3), 10.0)
            assert all(isinstance(r, Ranked) and len(r.item_ids) == 5 for r in [*first, second])
            assert old.calls == batcher.batches == 2
        finally:
            await w.close_channel()
            await server.stop(None)

    asyncio.run(run())


def test_a_draining_worker_ends_its_idle_streams_at_once(model) -> None:
    async def run() -> None:
        svc = Counting(model)
        server, w = await serve(svc)
        try:
            batcher = RankBatcher()
            await batcher.rank(w, row(1), 10.0)
            assert len(svc._streams) == 1
            svc.close_streams()
            t0 = asyncio.get_running_loop().time()
            await server.stop(5.0)  # nothing open: returns without spending the grace
            assert asyncio.get_running_loop().time() - t0 < 2.0
            (lane,) = batcher._lanes.values()
            await asyncio.sleep(0.05)
            assert lane.stream is not None and lane.stream.closed
        finally:
            await w.close_channel()

    asyncio.run(run())
