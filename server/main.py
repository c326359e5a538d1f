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

from recgen.promotion import pin
from recgen.repository import ModelRepository
from recgen.v1 import recommender_pb2, recommender_pb2_grpc
from server.auth import AuthInterceptor, load_tokens, server_credentials
from server.catalog import CatalogSync
from server.errors import DecodeErrors
from server.feedback import HISTORY_CAP
from server.metrics import GatewayMetrics
from server.metrics import render as render_metrics
from server.metrics_http import start_metrics_server
from server.privacy import UserIdPolicy
from server.rank_batch import RankBatcher
from server.ratelimit import RateLimiter
from server.service import RecommenderService
from server.state import SQLiteStore, StateStore, open_store
from server.user_state_cache import UserStateCache
from server.workers import WorkerPool, WorkerSpec, WorkerTls

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


def connection_age_options(args: argparse.Namespace) -> list[tuple[str, int]]:
    """gRPC server options that cycle each client connection after a maximum age.

    A gRPC client keeps one HTTP/2 connection for all its calls, so an L4 load
    balancer (a Kubernetes Service) pins it to one gateway forever and new
    replicas get no traffic. Past the age the server sends GOAWAY: calls in
    flight get the grace period to finish, and the client's channel opens a new
    connection (re-balanced) for the next call without failing any. 0 disables.
    """
    age_s = getattr(args, "max_connection_age_s", 0.0) or 0.0
    if age_s <= 0:
        return []
    grace_s = getattr(args, "max_connection_age_grace_s", 0.0) or 0.0
    return [
        ("grpc.max_connection_age_ms", int(age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(grace_s * 1000)),
    ]


def user_state_cache(args: argparse.Namespace, store: StateStore) -> UserStateCache | None:
    """The in-memory user-state cache, for the SQLite store only: it is right only
    while this gateway is the store's one writer. PostgreSQL means several gateways
    on shared state, where a cached user would miss the others' feedback."""
    size = getattr(args, "user_cache", 0) or 0
    if size <= 0 or not isinstance(store, SQLiteStore):
        return None
    return UserStateCache(size, HISTORY_CAP)


async def create_gateway(args: argparse.Namespace) -> Gateway:
    repo = ModelRepository(args.models)
    if not args.version:
        pin(args.models)  # from now on a new version serves only through the quality gate
    mv = repo.open(args.version, verify=False)
    cores = os.cpu_count() or 1
    n_local = args.workers
    spec = WorkerSpec(
        models=args.models,
        version=args.version,  # None: workers follow the SERVING pointer (hot swap)
        threads=max(1, cores // max(1, n_local)),
        max_new_tokens=args.max_new_tokens,
        max_delay_ms=args.max_delay_ms,
    )
    tls = (
        WorkerTls(args.worker_tls_ca, args.worker_tls_cert, args.worker_tls_key, args.worker_tls_server_name)
        if getattr(args, "worker_tls_ca", None)
        else None
    )
    pool = WorkerPool(
        spec,
        n_local,
        remote=args.worker_address,
        tls=tls,
        insecure=getattr(args, "worker_insecure", False),
        shards=getattr(args, "shards", 1),
    )
    store = open_store(args.state, synchronous=args.synchronous)
    live_catalog = CatalogSync(store, pool, args.models, args.version)
    await live_catalog.load()
    pool.on_ready = live_catalog.on_worker_ready  # no worker serves with a stale catalog
    await pool.start()

    metrics = GatewayMetrics()
    service = RecommenderService(
        store,
        pool,
        live_catalog,
        max_in_flight=args.max_in_flight,
        metrics=metrics,
        user_ids=UserIdPolicy(raw=args.log_user_ids, salt=args.log_salt),
        feedback_limiter=RateLimiter(args.feedback_rate, args.feedback_burst),
        live_catalog=live_catalog,
        user_cache=user_state_cache(args, store),
        rank_batcher=RankBatcher(max_in_flight=args.rank_batch)
        if getattr(args, "rank_batch", 0) > 0
        else None,
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
            *connection_age_options(args),
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
    catalog_poll = asyncio.create_task(gw.service.live_catalog.run(stop)) if gw.service.live_catalog else None
    await stop.wait()

    LOG.info("draining (grace %.1f s)", args.grace)
    for name in ("", SERVICE_NAME):
        await gw.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await gw.server.stop(grace=args.grace)  # refuses new calls, lets in-flight ones finish
    await flusher
    if catalog_poll is not None:
        await catalog_poll
    if gw.metrics_server is not None:
        gw.metrics_server.close()
    await gw.pool.stop()
    gw.store.close()
    LOG.info("stopped")


def run_serve(args: argparse.Namespace) -> int:
    asyncio.run(serve(args))
    return 0
