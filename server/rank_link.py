"""The batches in flight on one ordered link to a worker, and their answers.

A lane's RankStream (server/rank_batch.py) and a local worker's rank socket
(server/rank_socket.py) are both ordered links: the worker answers batches in the order
they were written. `InFlight` numbers each batch (`batch_id`, which the answer must echo:
a mismatch means nothing on the link can be trusted), gives it a future, fails one batch
with DEADLINE_EXCEEDED at its timeout while the link goes on (the late answer is then
dropped, as a unary call's deadline would end that call alone), and fails every batch
still pending when the link ends.

What it does not do: write to or read from the link.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import grpc

from recgen.worker.v1 import worker_pb2 as wpb
from server.ranked import rpc_error

Reply = asyncio.Future[wpb.RankRowsResponse]


class InFlight:
    def __init__(self) -> None:
        self._pending: deque[tuple[int, Reply]] = deque()
        self._next_id = 0
        self.last_sent = time.monotonic()

    def __bool__(self) -> bool:
        return bool(self._pending)

    def post(
        self, request: wpb.RankRowsRequest, timeout: float | None
    ) -> tuple[Reply, asyncio.TimerHandle | None]:
        """Number `request` and register it before it is written (its answer may come first):
        its future, and the timer that expires it (to cancel once it is settled)."""
        self._next_id += 1
        request.batch_id = self._next_id
        loop = asyncio.get_running_loop()
        future: Reply = loop.create_future()
        self._pending.append((self._next_id, future))
        self.last_sent = time.monotonic()
        timer = None
        if timeout is not None:
            request.timeout_s = timeout
            timer = loop.call_later(timeout, _expire, future)
        return future, timer

    def answer(self, reply: wpb.RankRowsResponse, link: str) -> None:
        """The next answer on the link; RuntimeError when it is not for the oldest batch."""
        batch_id, future = self._pending.popleft()
        if reply.batch_id != batch_id:
            raise RuntimeError(f"{link} answered batch {reply.batch_id}, expected {batch_id}")
        if not future.done():  # not timed out meanwhile
            future.set_result(reply)

    def fail_all(self, error: BaseException) -> None:
        """The link ended: every batch still pending on it fails with `error`."""
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(error)


def _expire(future: Reply) -> None:
    if not future.done():
        future.set_exception(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
