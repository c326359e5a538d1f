"""Coalescing the gateway's Rank calls: one RankBatch RPC carries many of them.

Each gRPC call costs both Python ends a fixed amount of CPU (call objects,
callbacks, the event loop), which at saturation costs more than the ranking
itself (docs/bench.md, section 2). So concurrent Rank calls to the same
worker queue here and leave together: a lane (one per worker) sends what is
waiting as soon as it has a free slot — at most `max_in_flight` batch RPCs
per worker at a time — so the batches form while the previous ones are being
answered, and a request on an idle lane waits for no timer, only for the
current turn of the event loop to end.

Each request keeps its own outcome: the worker answers every request with
the status its own Rank call would have had, and a failure of the whole RPC
(UNAVAILABLE, a deadline) reaches every request in it as that RPC error, so
`WorkerCalls.call_worker` (server/worker_calls.py) retries each on another
worker as before.

What it does not do: choose workers (the caller passes the one it picked),
retry, or change any request. A worker that does not know RankBatch (an
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
from server.workers import Worker

LOG = logging.getLogger(__name__)

_CODES = {c.value[0]: c for c in grpc.StatusCode}


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The error one request's own Rank call would have raised."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@dataclass
class _Waiting:
    request: wpb.RankRequest
    future: asyncio.Future[wpb.RankResponse]
    deadline: float | None  # time.monotonic() seconds


@dataclass
class _Lane:
    worker: Worker
    waiting: deque[_Waiting] = field(default_factory=deque)
    in_flight: int = 0  # batch RPCs sent and not yet answered
    scheduled: bool = False  # a send is queued for the end of this loop turn
    batched: bool = True  # False once the worker answered RankBatch with UNIMPLEMENTED


class RankBatcher:
    def __init__(self, max_batch: int = 64, max_in_flight: int = 1) -> None:
        assert max_batch >= 1 and max_in_flight >= 1, (max_batch, max_in_flight)
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._lanes: dict[str, _Lane] = {}  # worker name -> lane
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # RankBatch RPCs sent (for tests and the benchmark)
        self.requests = 0

    async def rank(self, worker: Worker, request: wpb.RankRequest, timeout: float | None) -> wpb.RankResponse:
        lane = self._lanes.get(worker.name)
        if lane is None:
            lane = self._lanes[worker.name] = _Lane(worker)
        lane.worker = worker  # a restarted worker is a new object with a new channel
        if not lane.batched:
            assert worker.stub is not None
            return await worker.stub.Rank(request, timeout=timeout)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(
            request, loop.create_future(), None if timeout is None else time.monotonic() + timeout
        )
        lane.waiting.append(waiting)
        self._schedule(lane)
        # A caller cancelled (its own deadline, its client gone) cancels this
        # future: a batch not yet sent leaves the request out.
        return await waiting.future

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
            reply = await worker.stub.RankBatch(
                wpb.RankBatchRequest(requests=[w.request for w in batch]), timeout=timeout
            )
            if len(reply.outcomes) != len(batch):
                raise RuntimeError(f"RankBatch of {len(batch)} answered {len(reply.outcomes)} outcomes")
            for w, outcome in zip(batch, reply.outcomes, strict=True):
                if outcome.code == 0:
                    _settle(w, result=outcome.response)
                else:
                    code = _CODES.get(outcome.code, grpc.StatusCode.UNKNOWN)
                    _settle(w, error=rpc_error(code, outcome.message))
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                LOG.warning("worker %s has no RankBatch: plain Rank calls from now on", worker.name)
                lane.batched = False
                await self._one_by_one(worker, batch)
            else:
                for w in batch:
                    _settle(w, error=e)
        except Exception as e:  # a bug: fail these requests (INTERNAL), never strand them
            LOG.exception("RankBatch to %s failed", worker.name)
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
                _settle(w, result=await worker.stub.Rank(w.request, timeout=timeout))
            except grpc.aio.AioRpcError as e:
                _settle(w, error=e)


def _settle(w: _Waiting, result: wpb.RankResponse | None = None, error: BaseException | None = None) -> None:
    """Answer one waiting caller, unless it has gone (cancelled) meanwhile."""
    if w.future.done():
        return
    if error is not None:
        w.future.set_exception(error)
    else:
        w.future.set_result(result)  # type: ignore[arg-type]
