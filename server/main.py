"""`recgen serve`: start workers, then the public gRPC server; drain on SIGTERM.

Order matters: worker processes are spawned (fork + exec) before the
gateway's own gRPC server exists. SIGTERM drains: health turns NOT_SERVING,
new requests are refused, in-flight ones finish within the grace period,
workers are stopped, and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recgen.repository import ModelRepository
from recgen.v1 import recommender_pb2, recommender_pb2_grpc
from server.auth import AuthInterceptor, load_tokens, server_credentials
from server.errors import DecodeErrors
from server.metrics import GatewayMetrics
from server.metrics import render as render_metrics
from server.metrics_http import start_metrics_server
from server.privacy import UserIdPolicy
from server.ratelimit import RateLimiter
from server.service import RecommenderService
from server.state import StateStore
from server.workers import WorkerPool, WorkerSpec

LOG = logging.getLogger(__name__)

SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: far above any valid request


@dataclass
class Gateway:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    pool: WorkerPool
    store: StateStore
    service: RecommenderService
    metrics_server: asyncio.Server | None = None


async def create_gateway(args: argparse.Namespace) -> Gateway:
    repo = ModelRepository(args.models)
    mv = repo.open(args.version, verify=False)
    catalog_ids = {it.item_id for it in mv.catalog()}
    cores = os.cpu_count() or 1
    n_local = args.workers
    spec = WorkerSpec(
        models=args.models,
        version=mv.name,
        threads=max(1, cores // max(1, n_local)),
        max_new_tokens=args.max_new_tokens,
        max_delay_ms=args.max_delay_ms,
    )
    pool = WorkerPool(spec, n_local, remote=args.worker_address)
    await pool.start()

    store = StateStore(args.state, synchronous=args.synchronous)
    metrics = GatewayMetrics()
    service = RecommenderService(
        store,
        pool,
        catalog_ids,
        max_in_flight=args.max_in_flight,
        metrics=metrics,
        user_ids=UserIdPolicy(raw=args.log_user_ids, salt=args.log_salt),
        feedback_limiter=RateLimiter(args.feedback_rate, args.feedback_burst),
    )
    interceptors: list[grpc.aio.ServerInterceptor] = (
        [AuthInterceptor(load_tokens(args.auth_tokens))] if args.auth_tokens else []
    )
    # After auth: a caller without a token gets UNAUTHENTICATED and its bytes are
    # never parsed; undecodable requests get INVALID_ARGUMENT, not UNKNOWN.
    interceptors.append(DecodeErrors())
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    recommender_pb2_grpc.add_RecommenderServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"{args.host}:{args.port}"
    if args.tls_cert:
        creds = server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {args.host}:{args.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics_server = None
    if args.metrics_port is not None:

        async def render() -> str:
            metrics.in_flight = service.admission.in_flight
            return await render_metrics(metrics, pool, mv.name)

        metrics_server = await start_metrics_server(args.host, args.metrics_port, render)
        mport = metrics_server.sockets[0].getsockname()[1]
        print(f"recgen: metrics on http://{args.host}:{mport}/metrics", flush=True)
    return Gateway(server, port, health_servicer, pool, store, service, metrics_server)


async def _flush_impressions(store: StateStore, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.2)
        except TimeoutError:
            pass
        await store.flush_impressions()


async def serve(args: argparse.Namespace) -> None:
    gw = await create_gateway(args)
    LOG.info("recgen serving on %s:%d with %d workers", args.host, gw.port, len(gw.pool.workers))
    print(f"recgen: serving on {args.host}:{gw.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    flusher = asyncio.create_task(_flush_impressions(gw.store, stop))
    await stop.wait()

    LOG.info("draining (grace %.1f s)", args.grace)
    for name in ("", SERVICE_NAME):
        await gw.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await gw.server.stop(grace=args.grace)  # refuses new calls, lets in-flight ones finish
    await flusher
    if gw.metrics_server is not None:
        gw.metrics_server.close()
    await gw.pool.stop()
    gw.store.close()
    LOG.info("stopped")


def run_serve(args: argparse.Namespace) -> int:
    asyncio.run(serve(args))
    return 0
