"""Coalescing the gateway's Rank calls: one packed RankRows RPC carries many of them.

Each gRPC call costs both Python ends a fixed amount of CPU (call objects,
callbacks, the event loop), which at saturation costs more than the ranking
itself (docs/bench.md). So concurrent rank requests to the same worker queue
here and leave together: a lane (one per worker) sends what is waiting as
soon as it has a free slot — at most `max_in_flight` batch RPCs per worker at
a time — so the batches form while the previous ones are being answered
(busy: batches grow), and a request on an idle lane waits for no timer, only
for the current turn of the event loop to end (idle: no wait). This is the
rank path's one batching point: the worker ranks each batch as one unit.

Each request keeps its own outcome: the worker answers every row with the
status its own Rank call would have had, and a failure of the whole RPC
(UNAVAILABLE, a deadline) reaches every request in it as that RPC error, so
`WorkerCalls.call_worker` (server/worker_calls.py) retries each on another
worker as before.

What it does not do: choose workers (the caller passes the one it picked),
retry, or change any request. A worker that does not know RankRows (an
older remote one) gets plain Rank calls from then on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import grpc

from recgen.worker.v1 import worker_pb2 as wpb
from server.ranked import Ranked, from_rank_response, rank_request, rpc_error, unpack
from server.workers import Worker

LOG = logging.getLogger(__name__)

__all__ = ["RankBatcher", "rank_alone", "rpc_error"]


async def rank_alone(worker: Worker, row: wpb.RankRow, timeout: float | None) -> Ranked:
    """One row in its own RankRows call (a gateway without the batcher), or a plain Rank
    call to a worker from before RankRows."""
    assert worker.stub is not None
    try:
        reply = await worker.stub.RankRows(wpb.RankRowsRequest(rows=[row]), timeout=timeout)
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
        return from_rank_response(await worker.stub.Rank(rank_request(row), timeout=timeout))
    (out,) = unpack(reply, 1)
    if isinstance(out, BaseException):
        raise out
    return out


@dataclass
class _Waiting:
    row: wpb.RankRow
    future: asyncio.Future[Ranked]
    deadline: float | None  # time.monotonic() seconds


@dataclass
class _Lane:
    worker: Worker
    waiting: deque[_Waiting] = field(default_factory=deque)
    in_flight: int = 0  # batch RPCs sent and not yet answered
    scheduled: bool = False  # a send is queued for the end of this loop turn
    batched: bool = True  # False once the worker answered RankRows with UNIMPLEMENTED


class RankBatcher:
    def __init__(self, max_batch: int = 64, max_in_flight: int = 1) -> None:
        assert max_batch >= 1 and max_in_flight >= 1, (max_batch, max_in_flight)
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._lanes: dict[str, _Lane] = {}  # worker name -> lane
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # RankRows RPCs sent (for tests and the benchmark)
        self.requests = 0

    async def rank(self, worker: Worker, row: wpb.RankRow, timeout: float | None) -> Ranked:
        lane = self._lanes.get(worker.name)
        if lane is None:
            lane = self._lanes[worker.name] = _Lane(worker)
        lane.worker = worker  # a restarted worker is a new object with a new channel
        if not lane.batched:
            assert worker.stub is not None
            return from_rank_response(await worker.stub.Rank(rank_request(row), timeout=timeout))
        loop = asyncio.get_running_loop()
        waiting = _Waiting(row, loop.create_future(), None if timeout is None else time.monotonic() + timeout)
        lane.waiting.append(waiting)
        self._schedule(lane)
        # A caller cancelled (its own deadline, its client gone) cancels this
        # future: a batch not yet sent leaves the request out.
        return await waiting.future

    def enqueue(
        self, worker: Worker, rows: list[wpb.RankRow], timeout: float | None
    ) -> list[asyncio.Future[Ranked]]:
        """Queue rows for `worker` (a RecommendBatch's many users): one future each, no task.
        A worker without RankRows answers them one by one with plain Rank calls."""
        lane = self._lanes.get(worker.name)
        if lane is None:
            lane = self._lanes[worker.name] = _Lane(worker)
        lane.worker = worker
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = [_Waiting(r, loop.create_future(), deadline) for r in rows]
        if lane.batched:
            lane.waiting.extend(waiting)
            self._schedule(lane)
        else:
            task = loop.create_task(self._one_by_one(worker, waiting))
            self._tasks.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._tasks.discard)
        return [w.future for w in waiting]

    def _schedule(self, lane: _Lane) -> None:
        if lane.scheduled or lane.in_flight >= self.max_in_flight or not lane.waiting:
            return
        lane.scheduled = True
        # At the end of this loop turn, so the requests this turn wakes up join.
        asyncio.get_running_loop().call_soon(self._send, lane)

    def _send(self, lane: _Lane) -> None:
        lane.scheduled = False
        if lane.in_flight >= self.max_in_flight:
            return
        batch: list[_Waiting] = []
        while lane.waiting and len(batch) < self.max_batch:
            w = lane.waiting.popleft()
            if not w.future.done():
                batch.append(w)
        if not batch:
            return
        lane.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._call(lane, batch))
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _call(self, lane: _Lane, batch: list[_Waiting]) -> None:
        worker = lane.worker
        deadlines = [w.deadline for w in batch if w.deadline is not None]
        # The batch may run as long as its most patient request; each caller's own
        # deadline still ends its wait (the public call is cancelled at it).
        timeout = None if len(deadlines) < len(batch) else max(0.001, max(deadlines) - time.monotonic())
        try:
            assert worker.stub is not None
            self.batches += 1
            self.requests += len(batch)
            reply = await worker.stub.RankRows(
                wpb.RankRowsRequest(rows=[w.row for w in batch]), timeout=timeout
            )
            for w, out in zip(batch, unpack(reply, len(batch)), strict=True):
                if isinstance(out, BaseException):
                    _settle(w, error=out)
                else:
                    _settle(w, result=out)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                LOG.warning("worker %s has no RankRows: plain Rank calls from now on", worker.name)
                lane.batched = False
                await self._one_by_one(worker, batch)
            else:
                for w in batch:
                    _settle(w, error=e)
        except Exception as e:  # a bug: fail these requests (INTERNAL), never strand them
            LOG.exception("RankRows to %s failed", worker.name)
            for w in batch:
                _settle(w, error=e)
        finally:
            lane.in_flight -= 1
            self._schedule(lane)

    async def _one_by_one(self, worker: Worker, batch: list[_Waiting]) -> None:
        assert worker.stub is not None
        for w in batch:
            if w.future.done():
                continue
            timeout = None if w.deadline is None else max(0.001, w.deadline - time.monotonic())
            try:
                _settle(
                    w, result=from_rank_response(await worker.stub.Rank(rank_request(w.row), timeout=timeout))
                )
            except grpc.aio.AioRpcError as e:
                _settle(w, error=e)


def _settle(w: _Waiting, result: Ranked | None = None, error: BaseException | None = None) -> None:
    """Answer one waiting caller, unless it has gone (cancelled) meanwhile."""
    if w.future.done():
        return
    if error is not None:
        w.future.set_exception(error)
    else:
        w.future.set_result(result)  # type: ignore[arg-type]
