"""`recgen worker`: load a version, warm up, then serve the worker API.

Health (grpc.health.v1) reports NOT_SERVING until every model has run a
real forward pass. A unix socket is plaintext (0600: this user only); a
HOST:PORT listener speaks TLS (`--tls-cert/--tls-key`, mutual with
`--tls-client-ca`), or plaintext only with `--insecure`. The process exits
by itself when the process that started it dies (`--parent-pid`):
PR_SET_PDEATHSIG where Linux offers it, and a poll of the parent as a
backstop, so a SIGKILLed gateway leaves no orphans.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import os
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from recgen.config import WorkerConfig
from recgen.tls import server_credentials
from recgen.worker.v1 import worker_pb2_grpc
from worker.metrics import Metrics
from worker.model import LoadedModel
from worker.rss_guard import RECYCLE_GRACE_S, RECYCLE_NOTICE_S, watch_rss
from worker.service import WorkerService

LOG = logging.getLogger(__name__)

SERVICE_NAME = "recgen.worker.v1.Worker"
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    if parent_pid <= 0:
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        LOG.warning("prctl unavailable; relying on polling the parent")
    if os.getppid() != parent_pid:  # died before prctl took effect
        os._exit(0)


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != parent_pid:
            LOG.warning("parent %d is gone: exiting", parent_pid)
            stop.set()
            return
        await asyncio.sleep(0.5)


def _bind(server: grpc.aio.Server, listen: str, creds: grpc.ServerCredentials | None = None) -> None:
    if listen.startswith("unix:"):
        path = listen.removeprefix("unix:").lstrip("/")
        path = "/" + path if listen.startswith("unix:/") else path
        if os.path.exists(path):
            os.unlink(path)  # stale socket of a previous run
        old = os.umask(0o177)  # the socket file is created 0600: this user only
        try:
            server.add_insecure_port(f"unix:{path}")
        finally:
            os.umask(old)
    elif creds is not None:
        if server.add_secure_port(listen, creds) == 0:
            raise OSError(f"cannot listen on {listen}")
    else:
        LOG.warning("PLAINTEXT worker API on %s: anyone who can reach it can use it (--insecure)", listen)
        if server.add_insecure_port(listen) == 0:
            raise OSError(f"cannot listen on {listen}")


def resolve_threads(cfg: WorkerConfig) -> WorkerConfig:
    """--threads 0 means this machine's cores: the model and its sessions get a number."""
    return cfg if cfg.threads else dataclasses.replace(cfg, threads=os.cpu_count() or 1)


async def serve_worker(cfg: WorkerConfig) -> None:
    cfg = resolve_threads(cfg)
    metrics = Metrics()
    loop = asyncio.get_running_loop()
    # Load and warm up before binding: the socket appears only once the
    # models have run a real forward pass, and health says SERVING at once.
    model = await loop.run_in_executor(None, LoadedModel.load, Path(cfg.models), cfg.version, cfg, metrics)
    await loop.run_in_executor(None, model.warmup)

    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 8 << 20),
            # The gateway pings remote workers every 2 s to find silent links
            # (server/worker_conn.py); gRPC's defaults would answer that with GOAWAY.
            ("grpc.http2.min_ping_interval_without_data_ms", 1000),
            ("grpc.http2.max_ping_strikes", 0),
        ]
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service = WorkerService(model, cfg, metrics)
    first_version = model.name
    # The service holds the model from here on; a local reference in this long-lived coroutine
    # kept the first version alive after a hot swap retired it (~600 MiB per worker, docs/soak.md).
    del model
    worker_pb2_grpc.add_WorkerServicer_to_server(service, server)
    creds = (
        server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        if cfg.tls_cert and cfg.tls_key
        else None
    )
    _bind(server, cfg.listen, creds)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    LOG.info("worker serving model %s on %s (%d threads)", first_version, cfg.listen, cfg.threads)

    stop = asyncio.Event()
    recycle = asyncio.Event()  # set by the RSS guard: drain before stopping
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    guard = asyncio.create_task(watch_rss(cfg.max_rss, recycle, stop)) if cfg.max_rss else None
    watch = None
    if cfg.parent_pid:
        watch = asyncio.create_task(_watch_parent(cfg.parent_pid, stop))
    swapper = None
    if not cfg.version and cfg.watch_interval > 0:
        # Not pinned to a version: follow the repository's SERVING pointer (hot swap).
        from worker.swap import ModelWatcher

        watcher = ModelWatcher(service, Path(cfg.models), cfg.watch_interval, health_servicer)
        swapper = asyncio.create_task(watcher.run(stop))
    await stop.wait()
    if swapper:
        swapper.cancel()
    LOG.info("worker stopping%s", " to recycle" if recycle.is_set() else "")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    # End idle RankStreams and stop the rank socket listening, so they do not hold the grace.
    service.close_streams()
    grace = 5.0
    if recycle.is_set():
        # Still answering while the gateway's health checks take this worker out of rotation.
        await asyncio.sleep(RECYCLE_NOTICE_S)
        grace = RECYCLE_GRACE_S
    await server.stop(grace=grace)
    if guard:
        guard.cancel()
    service.model.close()
    if watch:
        watch.cancel()
    LOG.info("worker stopped: every call answered")


def run_worker(cfg: WorkerConfig) -> int:
    _die_with_parent(cfg.parent_pid)
    asyncio.run(serve_worker(cfg))
    return 0
