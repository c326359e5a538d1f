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

The batches travel on one long-lived link per lane: to a worker on this host,
its rank socket (frames on a unix socket, server/rank_socket.py: no gRPC per
batch on either end); to any other, one RankStream (`_Stream`): a unary call
per batch costs both Python ends a call's setup (call object, metadata,
deadline timer). docs/perf/README.md has what each costs. A link answers in
order; a batch's deadline travels in the message and is also kept here by a
timer. A link that breaks fails the batches on it with UNAVAILABLE (retried
elsewhere like any unreachable worker's), and the next batch opens a new one;
an idle RankStream is closed after IDLE_CLOSE_S, so a draining worker's grace
is not held by it.

What it does not do: choose workers (the caller passes the one it picked),
retry, or change any request. A worker that does not know RankStream gets
unary RankRows calls, and one that does not know RankRows (an older remote
one) plain Rank calls, from then on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import grpc

from recgen.worker.v1 import worker_pb2 as wpb
from server.rank_link import InFlight
from server.rank_socket import RankSocketLink
from server.ranked import Ranked, from_rank_response, rank_request, rpc_error, unpack
from server.workers import Worker

LOG = logging.getLogger(__name__)

IDLE_CLOSE_S = 0.5  # a lane's stream with no batch for this long is closed (reopened on demand)

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


class _Stream:
    """One lane's RankStream call: batches written in order, answered in order (batch_id checked)."""

    def __init__(self, worker: Worker) -> None:
        assert worker.stub is not None
        self.worker = worker
        self.call = worker.stub.RankStream()
        self.pending = InFlight()
        self.closed = False
        self._write_lock = asyncio.Lock()  # one write at a time (several batches in flight)
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read())
        self._idle = loop.call_later(IDLE_CLOSE_S, self._check_idle)

    async def ask(self, request: wpb.RankRowsRequest, timeout: float | None) -> wpb.RankRowsResponse:
        """The worker's answer to one batch, within `timeout` (then DEADLINE_EXCEEDED, as a unary
        call's deadline would end it; the stream stays open and the late answer is dropped).
        Raises the stream's failure: UNAVAILABLE, or UNIMPLEMENTED from a worker without it."""
        future, timer = self.pending.post(request, timeout)  # before the write: the answer may come first
        try:
            try:
                async with self._write_lock:
                    await self.call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
                # The stream ended: the reader fails what is pending, this batch included.
                if not future.done():
                    future.set_exception(_broken(self.worker, e))
            return await future
        finally:
            if timer is not None:
                timer.cancel()

    async def _read(self) -> None:
        name = self.worker.name
        error: BaseException = rpc_error(grpc.StatusCode.UNAVAILABLE, f"worker {name} ended its rank stream")
        try:
            while True:
                reply = await self.call.read()
                if reply is grpc.aio.EOF:
                    break
                self.pending.answer(reply, "rank stream")
        except grpc.aio.AioRpcError as e:
            error = _broken(self.worker, e)
        except asyncio.CancelledError:
            error = rpc_error(grpc.StatusCode.UNAVAILABLE, f"rank stream to {self.worker.name} closed")
        except Exception as e:  # a bug: fail the batches on it (INTERNAL), never strand them
            LOG.exception("rank stream to %s failed", self.worker.name)
            error = e
        finally:
            self.closed = True
            self._idle.cancel()
            self.pending.fail_all(error)

    def _check_idle(self) -> None:
        if self.closed:
            return
        idle = time.monotonic() - self.pending.last_sent
        if idle >= IDLE_CLOSE_S and not self.pending:
            self.close()
        else:
            loop = asyncio.get_running_loop()
            self._idle = loop.call_later(max(0.0, IDLE_CLOSE_S - idle), self._check_idle)

    def close(self) -> None:
        """End the stream now; batches still pending on it fail with UNAVAILABLE."""
        self.closed = True
        self._idle.cancel()
        self.call.cancel()


def _broken(worker: Worker, e: BaseException) -> BaseException:
    """A stream's failure as each batch on it sees it: UNIMPLEMENTED as is (an older worker),
    anything else UNAVAILABLE, so the request is asked again on another worker (ranking has no
    side effects) as after any unreachable worker."""
    if isinstance(e, grpc.aio.AioRpcError):
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return e
        return rpc_error(
            grpc.StatusCode.UNAVAILABLE, f"rank stream to {worker.name} failed: {e.code().name} {e.details()}"
        )
    return rpc_error(grpc.StatusCode.UNAVAILABLE, f"rank stream to {worker.name} failed: {e}")


@dataclass
class _Lane:
    worker: Worker
    waiting: deque[_Waiting] = field(default_factory=deque)
    in_flight: int = 0  # batch RPCs sent and not yet answered
    scheduled: bool = False  # a send is queued for the end of this loop turn
    batched: bool = True  # False once the worker answered RankRows with UNIMPLEMENTED
    streamed: bool = True  # False once the worker answered RankStream with UNIMPLEMENTED
    # The worker's restart count when it offered no rank socket (TCP, older, or draining): not
    # asked again until it is restarted. None: ask.
    socket_off: int | None = None
    stream: _Stream | RankSocketLink | None = None  # where the lane's batches go now
    opening: asyncio.Lock = field(default_factory=asyncio.Lock)

    def usable(self) -> _Stream | RankSocketLink | None:
        s = self.stream
        return s if s is not None and not s.closed and s.worker is self.worker else None

    async def open_stream(self) -> _Stream | RankSocketLink:
        """The lane's link to its current worker, opened if there is none (or it ended, or the
        worker was replaced): the worker's rank socket when it is on this host and offers one,
        else a RankStream."""
        async with self.opening:  # one opening at a time: batches in flight share the result
            s = self.usable()
            if s is not None:
                return s
            if self.stream is not None:
                self.stream.close()
            worker = self.worker
            link: _Stream | RankSocketLink | None = None
            if self.socket_off != worker.restarts and worker.address.startswith("unix:"):
                assert worker.stub is not None
                try:
                    path = (await worker.stub.RankSocket(wpb.RankSocketRequest(), timeout=5.0)).path
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise  # unreachable: this batch fails UNAVAILABLE and is asked elsewhere
                    path = ""
                if path:
                    try:
                        link = await RankSocketLink.connect(worker, path)
                    except OSError as e:  # e.g. the gateway is in another mount namespace
                        LOG.warning("rank socket %s of %s: %s; RankStream instead", path, worker.name, e)
                        self.socket_off = worker.restarts
                else:
                    self.socket_off = worker.restarts
            self.stream = link or _Stream(worker)
            return self.stream


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
            request = wpb.RankRowsRequest(rows=[w.row for w in batch])
            reply = None
            if lane.streamed:
                try:
                    reply = await self._on_stream(lane, request, timeout)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    LOG.warning("worker %s has no RankStream: a RankRows call per batch now", worker.name)
                    lane.streamed = False
            if reply is None:
                reply = await worker.stub.RankRows(request, timeout=timeout)
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

    async def _on_stream(
        self, lane: _Lane, request: wpb.RankRowsRequest, timeout: float | None
    ) -> wpb.RankRowsResponse:
        link = lane.usable() or await lane.open_stream()
        return await link.ask(request, timeout)

    async def close(self) -> None:
        """End every lane's stream (the gateway stops: its workers need not wait on them)."""
        for lane in self._lanes.values():
            if lane.stream is not None and not lane.stream.closed:
                lane.stream.close()

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
