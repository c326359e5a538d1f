"""The gateway's worker pool: start, choose, supervise, restart, stop.

Local workers are child processes on unix sockets in a private directory
(0700, sockets 0600); remote workers are given by address. A request goes to
the healthy worker with the fewest requests in flight. A supervisor loop
takes a worker out of rotation the moment its process exits or it stops
answering health checks, and restarts local ones with exponential backoff.
This module does no model math and knows nothing of users.
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
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recgen.worker.v1 import worker_pb2_grpc

LOG = logging.getLogger(__name__)

WORKER_SERVICE = "recgen.worker.v1.Worker"
CHANNEL_OPTIONS = [
    # A restarted worker must be reachable again within a second, not after
    # gRPC's default reconnect backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 8 << 20),
]


# A restarted worker's old channel: how long its in-flight calls get to fail by themselves.
CLOSE_GRACE_S = 2.0


class NoWorkerAvailable(Exception):
    """No healthy worker can take the request."""


@dataclass
class WorkerSpec:
    models: str
    version: str | None
    threads: int
    max_new_tokens: int = 48
    max_delay_ms: float = 2.0
    extra_args: list[str] = field(default_factory=list)


@dataclass
class Worker:
    name: str
    address: str
    local: bool
    proc: subprocess.Popen[bytes] | None = None
    channel: grpc.aio.Channel | None = None
    stub: worker_pb2_grpc.WorkerStub | None = None
    health: health_pb2_grpc.HealthStub | None = None
    healthy: bool = False
    in_flight: int = 0
    restarts: int = 0
    failed_checks: int = 0
    next_restart_at: float = 0.0
    backoff: float = 0.5

    def connect(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self.stub = worker_pb2_grpc.WorkerStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close_channel(self, grace: float | None = None) -> None:
        if self.channel is not None:
            await self.channel.close(grace)
            self.channel = None


class WorkerPool:
    def __init__(self, spec: WorkerSpec, n_local: int, remote: list[str] | None = None) -> None:
        self.spec = spec
        self.socket_dir = Path(tempfile.mkdtemp(prefix="recgen-workers-"))  # 0700
        os.chmod(self.socket_dir, 0o700)
        self.workers: list[Worker] = [
            Worker(f"local-{i}", f"unix:{self.socket_dir}/worker-{i}.sock", local=True)
            for i in range(n_local)
        ] + [Worker(f"remote-{i}", a, local=False) for i, a in enumerate(remote or [])]
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        # Awaited before a worker enters rotation (at start, after a restart, after
        # failed checks): the gateway brings its catalog up to date there. Raising
        # keeps the worker out of rotation until the next try.
        self.on_ready: Callable[[Worker], Awaitable[None]] | None = None

    # ---------------------------------------------------------------- lifecycle

    def _spawn(self, w: Worker) -> None:
        s = self.spec
        cmd = [
            sys.executable,
            "-m",
            "recgen.cli",
            "worker",
            "--models",
            s.models,
            "--listen",
            w.address,
            "--threads",
            str(s.threads),
            "--max-new-tokens",
            str(s.max_new_tokens),
            "--max-delay-ms",
            str(s.max_delay_ms),
            "--parent-pid",
            str(os.getpid()),
            *s.extra_args,
        ]
        if s.version:
            cmd += ["--version", s.version]
        w.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        LOG.info("started worker %s (pid %d) on %s", w.name, w.proc.pid, w.address)

    async def start(self, timeout: float = 600.0) -> None:
        for w in self.workers:
            if w.local:
                self._spawn(w)
            w.connect()
        deadline = time.monotonic() + timeout
        await asyncio.gather(*(self._wait_ready(w, deadline) for w in self.workers))
        self._supervisor = asyncio.create_task(self._supervise())

    async def _check(self, w: Worker, timeout: float = 1.0) -> bool:
        if w.health is None:
            return False
        try:
            r = await w.health.Check(health_pb2.HealthCheckRequest(service=WORKER_SERVICE), timeout=timeout)
            return r.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            return False

    async def _admit(self, w: Worker) -> bool:
        """Run the on_ready hook, then put the worker in rotation; False if the hook failed."""
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
        self._spawn(w)
        w.connect()
        try:
            await self._wait_ready(w, time.monotonic() + 600.0)
            w.backoff = 0.5
        except (RuntimeError, TimeoutError) as e:
            LOG.error("restart of %s failed: %s", w.name, e)
            w.next_restart_at = time.monotonic() + w.backoff
            w.backoff = min(w.backoff * 2, 30.0)

    async def _supervise(self) -> None:
        restarting: dict[str, asyncio.Task[None]] = {}
        while not self._stopping:
            for w in self.workers:
                if w.name in restarting:
                    if not restarting[w.name].done():
                        continue
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
                    if w.healthy or await self._admit(w):
                        w.failed_checks = 0
                        continue
                else:
                    w.failed_checks += 1
                    if w.failed_checks >= 2 and w.healthy:
                        LOG.error("worker %s fails health checks: out of rotation", w.name)
                        w.healthy = False
                if w.local and (dead or w.failed_checks >= 3) and time.monotonic() >= w.next_restart_at:
                    restarting[w.name] = asyncio.create_task(self._restart(w))
            await asyncio.sleep(0.25)

    async def stop(self, grace: float = 5.0) -> None:
        self._stopping = True
        if self._supervisor:
            self._supervisor.cancel()
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        t_end = time.monotonic() + grace
        for w in self.workers:
            if w.proc is None:
                continue
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

    def pick(self, avoid: set[str] | None = None) -> Worker:
        """The healthy worker with the fewest requests in flight."""
        live = [w for w in self.workers if w.healthy and w.name not in (avoid or set())]
        if not live:
            raise NoWorkerAvailable("no healthy model worker")
        return min(live, key=lambda w: w.in_flight)

    def mark_failed(self, w: Worker) -> None:
        """A call found the worker unreachable: out of rotation until a health check passes."""
        if w.healthy:
            LOG.warning("worker %s unreachable: out of rotation", w.name)
        w.healthy = False

    @property
    def healthy_count(self) -> int:
        return sum(w.healthy for w in self.workers)

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self.workers)
