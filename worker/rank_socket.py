"""The worker's local rank socket: RankRows frames on a unix socket, no gRPC per batch.

A gateway on the same host asks for it with the RankSocket rpc (worker/service.py opens it
then, beside the listen socket, mode 0600 in the gateway's 0700 socket directory) and sends
each batch as a frame (recgen/frames.py): a serialized RankRowsRequest in, its
RankRowsResponse out, in order. Each gRPC message costs both Python ends ~250 µs of call
machinery (docs/perf/README.md); a frame costs tens. A batch the service can rank at once (small,
nothing queued: `WorkerService.rank_now`) is answered inside the read callback, with no task;
others go through `WorkerService.rank_rows` (the model thread), one at a time per connection.

A frame that does not parse, or a ranking that raises, closes the connection: the gateway
then fails the batches on it with UNAVAILABLE and asks another worker (ranking has no side
effects). What it does not do: rank (worker/rank_rows.py), or serve remote gateways (TCP
workers answer RankSocket with no path; those use RankStream).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

from recgen.frames import FrameReader, frame
from recgen.worker.v1 import worker_pb2 as wpb

LOG = logging.getLogger(__name__)

RankNow = Callable[[wpb.RankRowsRequest, "float | None"], "wpb.RankRowsResponse | None"]
RankLater = Callable[[wpb.RankRowsRequest, "float | None"], Awaitable[wpb.RankRowsResponse]]


def batch_deadline(request: wpb.RankRowsRequest) -> float | None:
    """The batch's deadline on this clock, from the timeout the gateway sent (0: none)."""
    return time.monotonic() + request.timeout_s if request.timeout_s > 0 else None


class _Connection(asyncio.Protocol):
    def __init__(self, rank_now: RankNow, rank_later: RankLater) -> None:
        self.rank_now = rank_now
        self.rank_later = rank_later
        self.reader = FrameReader()
        self.queue: deque[wpb.RankRowsRequest] = deque()
        self.busy = False  # a task is answering the queue (in order)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        try:
            for payload in self.reader.feed(data):
                self.queue.append(wpb.RankRowsRequest.FromString(payload))
            while self.queue and not self.busy:
                request = self.queue[0]
                reply = self.rank_now(request, batch_deadline(request))
                if reply is None:  # not now: the model thread, in order with what follows
                    self.busy = True
                    asyncio.get_running_loop().create_task(self._answer_queue())
                    return
                self.queue.popleft()
                self._send(request, reply)
        except Exception:  # a bad frame or a bug: the gateway retries the batches elsewhere
            LOG.exception("rank socket: closing a connection")
            self._close()

    async def _answer_queue(self) -> None:
        try:
            while self.queue and self.transport is not None:
                request = self.queue.popleft()
                self._send(request, await self.rank_later(request, batch_deadline(request)))
        except Exception:
            LOG.exception("rank socket: closing a connection")
            self._close()
        finally:
            self.busy = False
        if self.queue and self.transport is not None:
            self.data_received(b"")  # frames that came while the last one was ranked

    def _send(self, request: wpb.RankRowsRequest, reply: wpb.RankRowsResponse) -> None:
        reply.batch_id = request.batch_id
        if self.transport is not None:
            self.transport.write(frame(reply.SerializeToString()))

    def _close(self) -> None:
        self.queue.clear()
        if self.transport is not None:
            self.transport.close()


class RankSocket:
    """The listening socket; `path` is what RankSocket answers."""

    def __init__(self, rank_now: RankNow, rank_later: RankLater) -> None:
        self.rank_now = rank_now
        self.rank_later = rank_later
        self.path = ""
        self._server: asyncio.AbstractServer | None = None
        self._opening = asyncio.Lock()
        self._closed = False  # for good: a draining worker opens no new one

    async def open(self, listen: str) -> str:
        """Open the socket beside `listen` (unix:PATH) once; "" for a TCP listener."""
        async with self._opening:
            if self._closed or not listen.startswith("unix:"):
                return ""
            if self._server is not None:
                return self.path
            path = Path(listen.removeprefix("unix:")).with_suffix(".rank")
            try:
                path.unlink(missing_ok=True)  # a previous worker's, on the same path
                self._server = await asyncio.get_running_loop().create_unix_server(
                    lambda: _Connection(self.rank_now, self.rank_later), str(path)
                )
                os.chmod(path, 0o600)
            except OSError as e:  # the gateway then uses RankStream: slower, as correct
                LOG.warning("no rank socket at %s: %s", path, e)
                if self._server is not None:
                    self._server.close()
                    self._server = None
                return ""
            self.path = str(path)
            LOG.info("rank socket on %s", path)
            return self.path

    def close(self) -> None:
        """Stop listening (connections already open are answered until the process exits)."""
        self._closed = True
        if self._server is not None:
            self._server.close()
            Path(self.path).unlink(missing_ok=True)
            self._server = None
