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

import argparse
import asyncio
import ctypes
import logging
import os
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from recgen.worker.v1 import worker_pb2_grpc
from worker.metrics import Metrics
from worker.model import LoadedModel, WorkerConfig
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


def _server_credentials(cert: str, key: str, client_ca: str | None) -> grpc.ServerCredentials:
    """TLS for a HOST:PORT listener; mutual TLS (only the gateway's certificate) when a CA is given."""
    ca = Path(client_ca).read_bytes() if client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


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


async def serve_worker(args: argparse.Namespace) -> None:
    threads = args.threads or os.cpu_count() or 1
    cfg = WorkerConfig(
        threads=threads,
        device=args.device,
        max_batch=args.max_batch,
        max_delay=args.max_delay_ms / 1000.0,
        max_queue=args.max_queue,
        max_seqs=args.max_seqs,
        max_new_tokens=args.max_new_tokens,
        shard_index=args.shard[0],
        shard_count=args.shard[1],
    )
    metrics = Metrics()
    loop = asyncio.get_running_loop()
    # Load and warm up before binding: the socket appears only once the
    # models have run a real forward pass, and health says SERVING at once.
    model = await loop.run_in_executor(None, LoadedModel.load, Path(args.models), args.version, cfg, metrics)
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
    worker_pb2_grpc.add_WorkerServicer_to_server(service, server)
    tls_cert = getattr(args, "tls_cert", None)
    creds = _server_credentials(tls_cert, args.tls_key, args.tls_client_ca) if tls_cert else None
    _bind(server, args.listen, creds)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    LOG.info("worker serving model %s on %s (%d threads)", model.name, args.listen, threads)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch = None
    if args.parent_pid:
        watch = asyncio.create_task(_watch_parent(args.parent_pid, stop))
    swapper = None
    if not args.version and getattr(args, "watch_interval", 0) > 0:
        # Not pinned to a version: follow the repository's SERVING pointer (hot swap).
        from worker.swap import ModelWatcher

        swapper = asyncio.create_task(ModelWatcher(service, Path(args.models), args.watch_interval).run(stop))
    await stop.wait()
    if swapper:
        swapper.cancel()
    LOG.info("worker stopping")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=5.0)
    service.model.close()
    if watch:
        watch.cancel()


def run_worker(args: argparse.Namespace) -> int:
    _die_with_parent(args.parent_pid)
    asyncio.run(serve_worker(args))
    return 0
