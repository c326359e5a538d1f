"""A local worker's rank socket (worker/rank_socket.py, server/rank_socket.py) against a real
worker servicer (real model, real gRPC server and rank socket on real unix sockets): the
gateway's batches go over it with the answers RankRows gives and no gRPC call per batch; a
batch past its deadline fails alone; a connection that ends fails its batches with
UNAVAILABLE and the next batch reconnects. And the frames themselves (recgen/frames.py)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import grpc
import pytest

from recgen.config import WorkerConfig
from recgen.frames import MAX_FRAME, FrameError, FrameReader, frame
from recgen.worker.v1 import worker_pb2 as wpb
from recgen.worker.v1 import worker_pb2_grpc
from server.rank_batch import RankBatcher
from server.rank_socket import RankSocketLink
from server.ranked import Ranked
from server.workers import Worker
from worker.metrics import Metrics
from worker.model import LoadedModel
from worker.rank_socket import RankSocket
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
    """The real servicer, counting gRPC rank calls; `slow_s` sends every batch through the
    model-thread path after a sleep."""

    def __init__(self, model: LoadedModel, listen: str) -> None:
        super().__init__(model, WorkerConfig(threads=1, listen=listen), Metrics())
        self.grpc_calls = 0
        self.slow_s = 0.0

    async def RankStream(self, request_iterator, context):  # type: ignore[no-untyped-def]
        self.grpc_calls += 1
        async for reply in super().RankStream(request_iterator, context):
            yield reply

    async def RankRows(self, request, context):  # type: ignore[no-untyped-def]
        self.grpc_calls += 1
        return await super().RankRows(request, context)

    def rank_now(self, request, deadline):  # type: ignore[no-untyped-def]
        return None if self.slow_s else super().rank_now(request, deadline)

    async def rank_rows(self, request, deadline):  # type: ignore[no-untyped-def]
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        return await super().rank_rows(request, deadline)


async def serve(model: LoadedModel, tmp: Path) -> tuple[grpc.aio.Server, Worker, Counting]:
    listen = f"unix:{tmp}/w.sock"
    svc = Counting(model, listen)
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(svc, server)
    server.add_insecure_port(listen)
    await server.start()
    w = Worker(name="w0", address=listen, local=True)
    w.connect()
    return server, w, svc


async def stop(server: grpc.aio.Server, w: Worker, svc: Counting) -> None:
    svc.rank_socket.close()
    await w.close_channel()
    await server.stop(None)


def test_batches_go_over_the_rank_socket_with_rank_rows_answers(model, tmp_path: Path) -> None:
    async def run() -> None:
        server, w, svc = await serve(model, tmp_path)
        try:
            assert w.stub is not None
            alone = [await w.stub.RankRows(wpb.RankRowsRequest(rows=[row(u)]), timeout=10) for u in range(8)]
            svc.grpc_calls = 0
            batcher = RankBatcher()
            first = await asyncio.gather(*(batcher.rank(w, row(u), 10.0) for u in range(4)))
            rest = [await batcher.rank(w, row(u), 10.0) for u in range(4, 8)]
            got = [*first, *rest]
            assert [r.item_ids for r in got] == [list(a.item_ids) for a in alone]
            assert [r.scores for r in got] == [list(a.scores) for a in alone]
            assert svc.grpc_calls == 0  # only the RankSocket ask, no rank rpc
            (lane,) = batcher._lanes.values()
            assert isinstance(lane.stream, RankSocketLink)
            path = Path(svc.rank_socket.path)
            assert path.parent == tmp_path and stat.S_IMODE(os.stat(path).st_mode) == 0o600
            svc.slow_s = 0.01  # the model-thread path too, in order
            more = await asyncio.gather(*(batcher.rank(w, row(u), 10.0) for u in range(3)))
            assert [r.item_ids for r in more] == [list(a.item_ids) for a in alone[:3]]
            await batcher.close()
        finally:
            await stop(server, w, svc)

    asyncio.run(run())


def test_a_batch_past_its_deadline_fails_alone_on_the_socket(model, tmp_path: Path) -> None:
    async def run() -> None:
        server, w, svc = await serve(model, tmp_path)
        try:
            batcher = RankBatcher()
            assert isinstance(await batcher.rank(w, row(0), 10.0), Ranked)
            svc.slow_s = 0.4
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await batcher.rank(w, row(1), 0.1)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            svc.slow_s = 0.0
            ok = await batcher.rank(w, row(2), 10.0)  # after the late answer, dropped
            assert isinstance(ok, Ranked) and len(ok.item_ids) == 5
            (lane,) = batcher._lanes.values()
            assert isinstance(lane.stream, RankSocketLink) and not lane.stream.closed
            await batcher.close()
        finally:
            await stop(server, w, svc)

    asyncio.run(run())


def test_a_closed_connection_fails_its_batches_unavailable_and_reconnects(model, tmp_path: Path) -> None:
    async def run() -> None:
        server, w, svc = await serve(model, tmp_path)
        try:
            batcher = RankBatcher()
            assert isinstance(await batcher.rank(w, row(0), 10.0), Ranked)
            svc.slow_s = 1.0
            pending = asyncio.ensure_future(batcher.rank(w, row(1), 10.0))
            await asyncio.sleep(0.2)
            (lane,) = batcher._lanes.values()
            first = lane.stream
            assert isinstance(first, RankSocketLink)
            first.close()  # what a dead worker's socket does to the link
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await pending
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # retried elsewhere by call_worker
            svc.slow_s = 0.0
            assert isinstance(await batcher.rank(w, row(2), 10.0), Ranked)
            assert isinstance(lane.stream, RankSocketLink) and lane.stream is not first
            await batcher.close()
        finally:
            await stop(server, w, svc)

    asyncio.run(run())


def test_frames_split_and_joined_anyhow_come_out_whole() -> None:
    payloads = [b"", b"a", b"hello" * 1000, bytes(range(256))]
    stream = b"".join(frame(p) for p in payloads)
    for step in (1, 3, 7, len(stream)):
        reader = FrameReader()
        got = [f for i in range(0, len(stream), step) for f in reader.feed(stream[i : i + step])]
        assert got == payloads
    with pytest.raises(FrameError):
        FrameReader().feed((MAX_FRAME + 1).to_bytes(4, "little"))


def test_a_worker_offering_no_socket_gets_a_stream_until_it_is_restarted(model, tmp_path: Path) -> None:
    async def run() -> None:
        server, w, svc = await serve(model, tmp_path)
        try:
            svc.rank_socket.close()  # as a draining worker: it offers none
            batcher = RankBatcher()
            assert isinstance(await batcher.rank(w, row(0), 10.0), Ranked)
            (lane,) = batcher._lanes.values()
            assert lane.stream is not None and not isinstance(lane.stream, RankSocketLink)
            assert svc.grpc_calls == 1  # one RankStream
            lane.stream.close()
            assert isinstance(await batcher.rank(w, row(1), 10.0), Ranked)
            assert not isinstance(lane.stream, RankSocketLink)  # not asked again
            svc.rank_socket = RankSocket(svc.rank_now, svc.rank_rows)  # the restarted process's
            w.restarts += 1
            lane.stream.close()
            assert isinstance(await batcher.rank(w, row(2), 10.0), Ranked)
            assert isinstance(lane.stream, RankSocketLink)
            await batcher.close()
        finally:
            await stop(server, w, svc)

    asyncio.run(run())
