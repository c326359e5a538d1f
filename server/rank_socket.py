"""The gateway's end of a local worker's rank socket (worker/rank_socket.py): packed rank
batches as frames on a unix socket (recgen/frames.py), answered in order, no gRPC per batch.

`RankSocketLink.connect` opens one for a worker that offers it (the RankSocket rpc gives its
path; a worker on TCP, or one from before it, offers none: the lane uses RankStream). `ask`
has RankStream's contract (server/rank_batch.py `_Stream`): the answer within the timeout, else
DEADLINE_EXCEEDED while the link goes on; a connection that ends fails every batch on it with
UNAVAILABLE, which the caller retries on another worker.

What it does not do: choose workers, batch, or retry.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from recgen.frames import FrameReader, frame
from recgen.worker.v1 import worker_pb2 as wpb
from server.rank_link import InFlight
from server.ranked import rpc_error
from server.workers import Worker

LOG = logging.getLogger(__name__)


class RankSocketLink(asyncio.Protocol):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.pending = InFlight()
        self.closed = False
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None

    @classmethod
    async def connect(cls, worker: Worker, path: str) -> RankSocketLink:
        link = cls(worker)
        await asyncio.get_running_loop().create_unix_connection(lambda: link, path)
        return link

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            for payload in self._reader.feed(data):
                self.pending.answer(wpb.RankRowsResponse.FromString(payload), "rank socket")
        except Exception as e:
            LOG.error("rank socket to %s: %s; closing it", self.worker.name, e)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        closed = rpc_error(grpc.StatusCode.UNAVAILABLE, f"rank socket to {self.worker.name} closed")
        self.pending.fail_all(closed)

    # ------------------------------------------------------------ the link

    async def ask(self, request: wpb.RankRowsRequest, timeout: float | None) -> wpb.RankRowsResponse:
        """The worker's answer to one batch, within `timeout` (then DEADLINE_EXCEEDED, as a unary
        call's deadline would end it; the late answer is dropped); UNAVAILABLE if the link ends."""
        if self.closed or self._transport is None:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"rank socket to {self.worker.name} closed")
        future, timer = self.pending.post(request, timeout)
        try:
            self._transport.write(frame(request.SerializeToString()))
            return await future
        finally:
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        """End the link; batches still pending on it fail with UNAVAILABLE."""
        self.closed = True
        if self._transport is not None:
            self._transport.close()  # connection_lost fails what is pending
