"""The gateway's worker pool: start, choose, supervise, restart, stop.

Local workers are child processes on unix sockets in a private directory
(0700, sockets 0600), spoken to in plaintext; remote workers are given by
address or by a DNS name re-resolved every few seconds (server/discovery.py),
and spoken to over TLS (mutual when the gateway has a client certificate),
or in plaintext only when the operator says so. A request goes to the
healthy worker with the fewest requests in flight. A supervisor loop takes a
worker out of rotation the moment its process exits or it stops answering
health checks, restarts local ones with exponential backoff, and puts remote
ones back once they answer again. A remote worker whose address vanishes
from DNS is drained: no new requests, its channel closed once its calls end.
A local worker's command line is its WorkerConfig (`recgen serve`'s, with the
worker's own socket, shard and parent) written back as flags, so every worker
setting `serve` takes reaches it. How one worker is reached (channels, TLS) is
in server/worker_conn.py. This module does no model math and knows nothing of users.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from recgen.config import WorkerConfig
from recgen.config.flags import env_names
from recgen.worker.v1 import worker_pb2
from server.discovery import Discovery, WorkerTarget, parse_worker_addresses
from server.worker_conn import Worker, WorkerTls

# Worker and WorkerTls are imported from here by the gateway and tests.
__all__ = ["NoWorkerAvailable", "Worker", "WorkerPool", "WorkerTls", "local_worker_argv"]

LOG = logging.getLogger(__name__)

WORKER_SERVICE = "recgen.worker.v1.Worker"
# How often DNS names of remote workers are resolved again.
RESOLVE_EVERY_S = 5.0
# At start, how long to wait for remote workers that are not ready yet once one worker
# is: a dead remote host must not keep the gateway from serving; the supervisor admits it later.
REMOTE_START_GRACE_S = 10.0
# A retired worker's in-flight calls get this long to end before its channel is closed.
DRAIN_S = 60.0


# A local worker answering NOT_SERVING is left this long to finish its calls and exit
# (worker/rss_guard.py: 0.5 s notice + up to 30 s grace) before it is killed.
DRAIN_LIMIT_S = 35.0
DRAIN_LIMIT_CHECKS = int(DRAIN_LIMIT_S / 0.25)  # supervision rounds, one per 0.25 s
# A restarted worker's old channel: how long its in-flight calls get to fail by themselves.
CLOSE_GRACE_S = 2.0


class NoWorkerAvailable(Exception):
    """No healthy worker can take the request."""


def local_worker_argv(worker: WorkerConfig, w: Worker, shards: int) -> list[str]:
    """`recgen worker`'s command line for local worker w: the pool's WorkerConfig with w's own
    socket, catalog shard and this process as its parent, every setting spelled out."""
    own = replace(worker, listen=w.address, shard=(w.shard, shards), parent_pid=os.getpid())
    return [sys.executable, "-m", "recgen.cli", "worker", *own.to_argv()]


def _spawn_local(worker: WorkerConfig, w: Worker, shards: int) -> None:
    """Start w's process. Its command line is its whole configuration: the gateway's RECGEN_*
    variables of worker settings (RECGEN_TLS_CERT is the public port's) are not passed on."""
    skip = env_names(WorkerConfig)
    env = {k: v for k, v in os.environ.items() if k not in skip}
    w.proc = subprocess.Popen(local_worker_argv(worker, w, shards), stdin=subprocess.DEVNULL, env=env)
    LOG.info("started worker %s (pid %d) on %s", w.name, w.proc.pid, w.address)


class WorkerPool:
    def __init__(
        self,
        worker: WorkerConfig,
        n_local: int,
        remote: list[str] | None = None,
        tls: WorkerTls | None = None,
        insecure: bool = False,
        resolve_every: float = RESOLVE_EVERY_S,
        shards: int = 1,
    ) -> None:
        self.worker = worker  # the local workers' settings (listen, shard, parent_pid: set per worker)
        self.shards = shards  # catalog shards: each request goes to one worker of every shard
        fixed, names = parse_worker_addresses(remote or [])
        tcp = [t.address for t in fixed if not t.is_unix] + [str(n) for n in names]
        if tcp and tls is None and not insecure:
            raise ValueError(
                f"remote workers {', '.join(tcp)} need TLS (--worker-tls-ca) or an explicit --worker-insecure"
            )
        if tcp and tls is None:
            LOG.warning(
                "PLAINTEXT to remote workers %s: requests, user histories and texts cross the "
                "network unencrypted and unauthenticated (--worker-insecure)",
                ", ".join(tcp),
            )
        self.tls = tls
        self._credentials = tls.credentials() if tls else None
        self.discovery = Discovery(fixed, names)
        self.resolve_every = resolve_every
        self.socket_dir = Path(tempfile.mkdtemp(prefix="recgen-workers-"))  # 0700
        os.chmod(self.socket_dir, 0o700)
        self.workers: list[Worker] = [
            Worker(
                f"local-{i}",
                f"unix:{self.socket_dir}/worker-{i}.sock",
                local=True,
                shard=i % shards,
                shard_count=shards,
            )
            for i in range(n_local)
        ]
        self._fixed_names = {t: f"remote-{i}" for i, t in enumerate(fixed)}
        self._draining: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        # Awaited before a worker enters rotation (at start, after a restart, after
        # failed checks): the gateway brings its catalog up to date there. Raising
        # keeps the worker out of rotation until the next try.
        self.on_ready: Callable[[Worker], Awaitable[None]] | None = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self, timeout: float = 600.0) -> None:
        for w in self.workers:
            _spawn_local(self.worker, w, self.shards)
            w.connect()
        deadline = time.monotonic() + timeout
        for target in await self.discovery.targets():
            self._add_remote(target)
        while not self.workers:  # workers started after the gateway: their name resolves later
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no workers: {', '.join(map(str, self.discovery.names))} resolve to nothing"
                )
            await asyncio.sleep(1.0)
            for target in await self.discovery.targets():
                self._add_remote(target)
        local = asyncio.gather(*(self._wait_ready(w, deadline) for w in self.workers if w.local))
        remote = {asyncio.create_task(self._wait_ready(w, deadline)) for w in self.workers if not w.local}
        await local
        # Every remote worker, or those up REMOTE_START_GRACE_S after one worker is in rotation.
        grace_end = time.monotonic() + REMOTE_START_GRACE_S if self.healthy_count else None
        pending, errors = set(remote), list[BaseException]()
        while pending:
            wait = None if grace_end is None else max(0.0, grace_end - time.monotonic())
            done, pending = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            errors += [e for e in (t.exception() for t in done) if e is not None]
            if grace_end is None and self.healthy_count:
                grace_end = time.monotonic() + REMOTE_START_GRACE_S
        for t in pending:
            t.cancel()
        if not self.healthy_count:
            raise errors[0] if errors else RuntimeError("no worker ready")
        for w in self.workers:
            if not w.healthy:
                LOG.warning("remote worker %s not ready: serving without it for now", w.name)
        self._supervisor = asyncio.create_task(self._supervise())

    async def _check(self, w: Worker, timeout: float = 1.0) -> bool:
        if w.health is None:
            return False
        try:
            r = await w.health.Check(health_pb2.HealthCheckRequest(service=WORKER_SERVICE), timeout=timeout)
            w.draining = r.status == health_pb2.HealthCheckResponse.NOT_SERVING
            return r.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            w.draining = False  # no answer at all: hung or gone
            return False

    async def _learn_shard(self, w: Worker) -> bool:
        """Ask the worker which catalog shard it ranks; False (not admitted) if it does not
        fit this pool's sharding: it would answer for the wrong rows."""
        assert w.stub is not None
        try:
            st = await w.stub.Stats(worker_pb2.StatsRequest(), timeout=5.0)
            index, count = st.shard_index, max(1, st.shard_count)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                LOG.warning("worker %s not admitted: Stats failed: %s", w.name, e.code().name)
                return False
            index, count = 0, 1  # a worker from before sharding ranks everything
        if count != self.shards:
            LOG.error(
                "worker %s ranks shard %d/%d but this gateway serves %d shard(s): not admitted",
                w.name,
                index,
                count,
                self.shards,
            )
            return False
        w.shard, w.shard_count = index, count
        return True

    async def _admit(self, w: Worker) -> bool:
        """Run the on_ready hook, then put the worker in rotation; False if the hook failed."""
        if not await self._learn_shard(w):
            return False
        if self.on_ready is not None:
            try:
                await self.on_ready(w)
            except Exception as e:  # noqa: BLE001 - any failure keeps it out; logged, retried
                LOG.warning("worker %s not admitted: %s", w.name, e)
                return False
        w.healthy = True
        return True

    async def _wait_ready(self, w: Worker, deadline: float) -> None:
        while time.monotonic() < deadline:
            if w.local and w.proc is not None and w.proc.poll() is not None:
                raise RuntimeError(f"worker {w.name} exited with {w.proc.returncode} while starting")
            if await self._check(w) and await self._admit(w):
                w.failed_checks = 0
                LOG.info("worker %s ready", w.name)
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"worker {w.name} not ready in time")

    async def _restart(self, w: Worker) -> None:
        w.healthy = False
        if w.proc is not None and w.proc.poll() is None:
            w.proc.kill()  # hung: SIGKILL works even on a SIGSTOPped process
            await asyncio.get_running_loop().run_in_executor(None, w.proc.wait)
        # Calls still in flight on the dead process fail with UNAVAILABLE once the
        # transport sees its socket close, and Rank retries them elsewhere. Closing
        # without a grace would cancel them instead, and a cancelled upstream call
        # leaves the caller's RPC without any status until its deadline.
        await w.close_channel(grace=CLOSE_GRACE_S)
        w.restarts += 1
        _spawn_local(self.worker, w, self.shards)
        w.connect()
        try:
            await self._wait_ready(w, time.monotonic() + 600.0)
            w.backoff = 0.5
        except (RuntimeError, TimeoutError) as e:
            LOG.error("restart of %s failed: %s", w.name, e)
            w.next_restart_at = time.monotonic() + w.backoff
            w.backoff = min(w.backoff * 2, 30.0)

    async def _tend(self, w: Worker, restarting: dict[str, asyncio.Task[None]]) -> None:
        """One supervision step for one worker: check, admit, take out, restart."""
        if w.retiring:
            return
        if w.name in restarting:
            if not restarting[w.name].done():
                return
            del restarting[w.name]
        dead = w.local and w.proc is not None and w.proc.poll() is not None
        if dead:
            if w.healthy:
                LOG.error(
                    "worker %s exited (code %s): out of rotation",
                    w.name,
                    w.proc.returncode if w.proc else None,
                )
            w.healthy = False
        elif await self._check(w, timeout=1.0):
            if w.healthy:
                w.failed_checks = 0
            elif await self._admit(w):
                LOG.info("worker %s in rotation", w.name)
                w.failed_checks = 0
            return
        else:
            w.failed_checks += 1
            if w.failed_checks >= 2 and w.healthy:
                LOG.error("worker %s fails health checks: out of rotation", w.name)
                w.healthy = False
        # A worker that answers NOT_SERVING is draining (recycling past --worker-max-rss, or
        # stopping): out of rotation, but killed only if it has not exited after DRAIN_LIMIT_S.
        hung = w.failed_checks >= (DRAIN_LIMIT_CHECKS if w.draining else 3)
        if w.local and (dead or hung) and time.monotonic() >= w.next_restart_at:
            restarting[w.name] = asyncio.create_task(self._restart(w))

    async def _supervise(self) -> None:
        restarting: dict[str, asyncio.Task[None]] = {}
        resolving: asyncio.Task[None] | None = None
        next_resolve = time.monotonic() + self.resolve_every
        while not self._stopping:
            # Concurrently: a silent remote worker's 1 s check timeout must not delay the others.
            await asyncio.gather(*(self._tend(w, restarting) for w in list(self.workers)))
            if (
                self.discovery.dynamic
                and time.monotonic() >= next_resolve
                and (resolving is None or resolving.done())
            ):
                resolving = asyncio.create_task(self._refresh())
                next_resolve = time.monotonic() + self.resolve_every
            await asyncio.sleep(0.25)

    # ---------------------------------------------------------------- remote membership

    def _add_remote(self, t: WorkerTarget) -> Worker:
        name = self._fixed_names.get(t) or (f"{t.server_name}/{t.address}" if t.server_name else t.address)
        tls = self.tls
        w = Worker(
            name,
            t.address,
            local=False,
            credentials=None if t.is_unix else self._credentials,
            server_name=(tls.server_name if tls and tls.server_name else t.server_name),
        )
        w.connect()
        self.workers.append(w)
        return w

    async def _refresh(self) -> None:
        """Dial workers new in DNS (the supervisor admits them), drain vanished ones."""
        targets = await self.discovery.targets()
        known = {w.address: w for w in self.workers if not w.local and not w.retiring}
        for t in targets:
            if t.address not in known:
                LOG.info("discovered worker %s", t.address)
                self._add_remote(t)
        wanted = {t.address for t in targets}
        for address, w in known.items():
            if address not in wanted:
                task = asyncio.create_task(self._retire(w))
                self._draining.add(task)
                task.add_done_callback(self._draining.discard)

    async def _retire(self, w: Worker) -> None:
        LOG.info("worker %s gone from DNS: draining", w.name)
        w.retiring, w.healthy = True, False
        t_end = time.monotonic() + DRAIN_S
        while w.in_flight and time.monotonic() < t_end:
            await asyncio.sleep(0.1)
        await w.close_channel(grace=CLOSE_GRACE_S)
        self.workers = [x for x in self.workers if x is not w]
        LOG.info("worker %s retired", w.name)

    async def stop(self, grace: float = 5.0) -> None:
        self._stopping = True
        if self._supervisor:
            self._supervisor.cancel()
        for task in list(self._draining):
            task.cancel()
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        t_end = time.monotonic() + grace
        for w in self.workers:
            if w.proc is not None:
                while w.proc.poll() is None and time.monotonic() < t_end:
                    await asyncio.sleep(0.05)
                if w.proc.poll() is None:
                    w.proc.kill()
                    w.proc.wait()
            await w.close_channel()
        for p in self.socket_dir.glob("*"):
            p.unlink(missing_ok=True)
        self.socket_dir.rmdir()

    # ---------------------------------------------------------------- choice

    def pick(self, avoid: set[str] | None = None, shard: int | None = None) -> Worker:
        """The healthy worker with the fewest requests in flight (of one catalog shard if given)."""
        live = [
            w
            for w in self.workers
            if w.healthy and w.name not in (avoid or set()) and (shard is None or w.shard == shard)
        ]
        if not live:
            if shard is not None:
                raise NoWorkerAvailable(f"no healthy model worker for catalog shard {shard}/{self.shards}")
            raise NoWorkerAvailable("no healthy model worker")
        return min(live, key=lambda w: w.in_flight)

    def mark_failed(self, w: Worker) -> None:
        """A call found the worker unreachable: out of rotation until a health check passes."""
        if w.healthy:
            LOG.warning("worker %s unreachable: out of rotation", w.name)
        w.healthy = False

    def unserved_shards(self) -> list[int]:
        """Catalog shards with no healthy worker in rotation: requests fail now (the health signal)."""
        served = {w.shard for w in self.workers if w.healthy}
        return [s for s in range(self.shards) if s not in served]

    @property
    def healthy_count(self) -> int:
        return sum(w.healthy for w in self.workers)

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self.workers)
