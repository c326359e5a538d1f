"""The gateway's grpc.health.v1 status, kept true: SERVING only while it can answer.

Every HEALTH_EVERY_S the gateway is judged on two things, and both services it
reports ("" for the whole server, recgen.v1.Recommender) get the result:

- every catalog shard has a healthy worker in rotation (server/workers.py takes
  a worker out after two failed health checks, ~2.5 s, and puts it back once it
  answers again or has been restarted);
- the state store's writer opens and commits a write transaction within
  STORE_PROBE_TIMEOUT_S: an empty catalog append, which stores nothing
  (SQLite: BEGIN IMMEDIATE, COMMIT; PostgreSQL: the append lock, COMMIT), run on
  the store's one writer thread in order with every other write.

NOT_SERVING names its reasons in the log; SERVING comes back by itself when they
are gone.

Apart from those, the service POINTER_HEALTH_SERVICE ("recgen.v1.ServingPointer")
says whether every worker in rotation serves the model version the repository's
SERVING pointer names: NOT_SERVING when one refused it (corrupted files, a failed
load: worker/swap.py) and still serves an older one. It does not change the
gateway's own status (requests are still answered); it is polled from the workers'
health services every POINTER_PROBE_EVERY_S.

`drain()` (SIGTERM) sets NOT_SERVING for good. `HealthServicer` adds
List, which grpcio-health-checking 1.85's asyncio servicer lacks.

What it does not do: take workers out of rotation or restart them
(server/workers.py), or see a SQLite disk that is full (the probe writes no
page): the requests' own writes answer UNAVAILABLE then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from recgen.promotion import POINTER_HEALTH_SERVICE
from server.state import StateStore, StoreUnavailable
from server.workers import WorkerPool

LOG = logging.getLogger(__name__)

HEALTH_EVERY_S = 0.5  # how often the status is judged again
STORE_PROBE_EVERY_S = 1.0  # how often the store's writer is probed
STORE_PROBE_TIMEOUT_S = 2.0  # a probe unanswered this long counts as a store that cannot write
POINTER_PROBE_EVERY_S = 2.0  # how often the workers are asked whether they follow the pointer
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthServicer(health.aio.HealthServicer):
    """The library's asyncio servicer (Check, Watch) plus List."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        # _server_status: service name -> status, the library's one table (Check reads it too).
        statuses = {name: health_pb2.HealthCheckResponse(status=s) for name, s in self._server_status.items()}
        return health_pb2.HealthListResponse(statuses=statuses)


def _retrieved(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


class GatewayHealth:
    """Judges the gateway every HEALTH_EVERY_S and sets `services` on `servicer` accordingly."""

    def __init__(
        self, servicer: HealthServicer, pool: WorkerPool, store: StateStore, services: Sequence[str]
    ) -> None:
        self.servicer = servicer
        self.pool = pool
        self.store = store
        self.services = tuple(services)
        self.reasons: list[str] = []  # why NOT_SERVING; empty: SERVING
        self._store_error = ""  # the last probe's failure; "" when it committed
        self._probe: asyncio.Future[Any] | None = None
        self._probe_t0 = 0.0
        self._next_probe = 0.0
        self._published: int | None = None
        self._pointer: asyncio.Task[None] | None = None
        self._next_pointer = 0.0
        self._pointer_published: int | None = None

    async def _probe_pointer(self) -> None:
        """POINTER_HEALTH_SERVICE from the healthy workers' own: NOT_SERVING if any says so."""

        async def one(w: Any) -> int:
            try:
                req = health_pb2.HealthCheckRequest(service=POINTER_HEALTH_SERVICE)
                return (await w.health.Check(req, timeout=1.0)).status
            except grpc.aio.AioRpcError:  # NOT_FOUND (a worker that does not watch), or gone
                return SERVING

        workers = [w for w in self.pool.workers if w.healthy and w.health is not None]
        statuses = await asyncio.gather(*(one(w) for w in workers))
        status = NOT_SERVING if NOT_SERVING in statuses else SERVING
        if status != self._pointer_published:
            if status == NOT_SERVING:
                LOG.error("a worker refused the model version the SERVING pointer names (see its log)")
            await self.servicer.set(POINTER_HEALTH_SERVICE, status)
            self._pointer_published = status

    def _start_pointer_probe(self, now: float) -> None:
        if (self._pointer is None or self._pointer.done()) and now >= self._next_pointer:
            self._pointer = asyncio.ensure_future(self._probe_pointer())
            self._pointer.add_done_callback(_retrieved)
            self._next_pointer = now + POINTER_PROBE_EVERY_S

    def _probe_store(self, now: float) -> str:
        """The store's state ("" when it can write); starts a probe when one is due."""
        if self._probe is not None and self._probe.done():
            e = self._probe.exception()
            if e is None:
                self._store_error = ""
            else:  # StoreUnavailable says "state store ..." itself; anything else is named
                self._store_error = str(e) if isinstance(e, StoreUnavailable) else f"state store: {e!r}"
            self._probe = None
        if self._probe is None and now >= self._next_probe:
            self._probe = asyncio.ensure_future(self.store.add_catalog_changes([]))
            self._probe.add_done_callback(_retrieved)  # one still running at shutdown logs nothing
            self._probe_t0, self._next_probe = now, now + STORE_PROBE_EVERY_S
        if self._probe is not None and now - self._probe_t0 > STORE_PROBE_TIMEOUT_S:
            return f"state store write unanswered for {now - self._probe_t0:.1f} s"
        return self._store_error

    def judge(self) -> list[str]:
        """The reasons the gateway cannot answer now (empty: it can)."""
        shards = self.pool.unserved_shards()
        reasons = []
        if shards:
            reasons.append(
                "no healthy model worker"
                + (f" for catalog shard(s) {', '.join(map(str, shards))}" if self.pool.shards > 1 else "")
            )
        if store := self._probe_store(time.monotonic()):
            reasons.append(store)
        return reasons

    async def update(self) -> None:
        self._start_pointer_probe(time.monotonic())
        self.reasons = self.judge()
        status = NOT_SERVING if self.reasons else SERVING
        if status == self._published:
            return
        if status == SERVING:
            LOG.info("health: SERVING")
        else:
            LOG.error("health: NOT_SERVING: %s", "; ".join(self.reasons))
        for name in self.services:
            await self.servicer.set(name, status)
        self._published = status

    async def run(self, stop: asyncio.Event) -> None:
        """`update` every HEALTH_EVERY_S until `stop` is set."""
        while not stop.is_set():
            await self.update()
            try:
                await asyncio.wait_for(stop.wait(), timeout=HEALTH_EVERY_S)
            except TimeoutError:
                pass

    async def drain(self) -> None:
        """NOT_SERVING from now on, whatever `update` finds (SIGTERM: the gateway is leaving)."""
        await self.servicer.enter_graceful_shutdown()
