"""`recgen serve`: start workers, then the public gRPC server; drain on SIGTERM.

Order matters: worker processes are spawned (fork + exec) before the
gateway's own gRPC server exists. While serving, health (server/health.py)
says SERVING only while every shard has a healthy worker and the state store
can write. SIGTERM drains: health turns NOT_SERVING, new requests are refused,
in-flight ones finish within the grace period, workers are stopped, and the
process exits 0. Before the server stops, the drain (server/drain.py) waits until every open
client connection has had its connection-age GOAWAY and left, so that no call reaches a
stopping server (grpc core would cancel it: CANCELLED, never retried).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, replace
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from recgen.config import ConfigError, ServeConfig
from recgen.config.serve import DEFAULT_METRICS_PORT
from recgen.promotion import pin
from recgen.repository import ModelRepository
from recgen.tls import server_credentials
from recgen.v1 import recommender_pb2, recommender_pb2_grpc
from server.access_log import AccessLog
from server.auth import HEALTH_SERVICE, AuthInterceptor, load_tokens
from server.catalog import CatalogSync
from server.discovery import parse_worker_addresses
from server.drain import drain, new_server_id, server_ids
from server.errors import ErrorStatus
from server.feedback import HISTORY_CAP
from server.health import GatewayHealth, HealthServicer
from server.metrics import GatewayMetrics
from server.metrics import render as render_metrics
from server.metrics_http import start_metrics_server
from server.privacy import UserIdPolicy
from server.rank_batch import RankBatcher
from server.ratelimit import RateLimiter
from server.reflection import SERVICES as REFLECTION_SERVICES
from server.reflection import enable_reflection
from server.service import RecommenderService
from server.state import SQLiteStore, StateStore, open_store
from server.user_state_cache import UserStateCache
from server.workers import WorkerPool, WorkerTls

LOG = logging.getLogger(__name__)

SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: far above any valid request


@dataclass
class Gateway:
    server: grpc.aio.Server
    port: int
    health: GatewayHealth
    pool: WorkerPool
    store: StateStore
    service: RecommenderService
    metrics_server: asyncio.Server | None = None
    channelz_id: int | None = None  # in grpc's channelz registry: the drain counts its connections


def connection_age_options(cfg: ServeConfig) -> list[tuple[str, int]]:
    """gRPC server options that cycle each client connection after a maximum age.

    A gRPC client keeps one HTTP/2 connection for all its calls, so an L4 load
    balancer (a Kubernetes Service) pins it to one gateway forever and new
    replicas get no traffic. Past the age the server sends GOAWAY: calls in
    flight get the grace period to finish, and the client's channel opens a new
    connection (re-balanced) for the next call without failing any. 0 disables. With an age
    at most half of --grace the SIGTERM drain uses this GOAWAY to move clients off before it
    stops (server/drain.py).
    """
    age = cfg.max_connection_age_s
    if age <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", int(age * 1000)),
        ("grpc.max_connection_age_grace_ms", int(cfg.max_connection_age_grace_s * 1000)),
    ]


def user_state_cache(cfg: ServeConfig, store: StateStore) -> UserStateCache | None:
    """The in-memory user-state cache, for the SQLite store only: it is right only
    while this gateway is the store's one writer. PostgreSQL means several gateways
    on shared state, where a cached user would miss the others' feedback."""
    if cfg.user_cache <= 0 or not isinstance(store, SQLiteStore):
        return None
    return UserStateCache(cfg.user_cache, HISTORY_CAP)


def auth_interceptors(cfg: ServeConfig) -> list[grpc.aio.ServerInterceptor]:
    """Token auth when --auth-tokens is given; health and reflection stay open unless
    --auth-health / --auth-reflection."""
    if not cfg.auth_tokens:
        return []
    open_services = (() if cfg.auth_health else (HEALTH_SERVICE,)) + (
        () if cfg.auth_reflection else REFLECTION_SERVICES
    )
    return [AuthInterceptor(load_tokens(cfg.auth_tokens), open_services)]


def _check_worker_addresses(cfg: ServeConfig) -> None:
    """--worker-address syntax, before anything starts (ServeConfig checked the rest)."""
    try:
        parse_worker_addresses(list(cfg.worker_address))
    except ValueError as e:
        raise ConfigError(str(e)) from None


async def create_gateway(cfg: ServeConfig) -> Gateway:
    repo = ModelRepository(cfg.models)
    if not cfg.version:
        pin(cfg.models)  # from now on a new version serves only through the quality gate
    mv = repo.open(cfg.version, verify=False)
    # Local workers share the cores unless --threads says otherwise.
    cores = os.cpu_count() or 1
    local = replace(cfg.worker, threads=cfg.worker.threads or max(1, cores // max(1, cfg.workers)))
    tls = (
        WorkerTls(cfg.worker_tls_ca, cfg.worker_tls_cert, cfg.worker_tls_key, cfg.worker_tls_server_name)
        if cfg.worker_tls_ca
        else None
    )
    pool = WorkerPool(
        local,
        cfg.workers,
        remote=list(cfg.worker_address),
        tls=tls,
        insecure=cfg.worker_insecure,
        shards=cfg.shards,
    )
    store = open_store(cfg.state, synchronous=cfg.synchronous)
    live_catalog = CatalogSync(store, pool, cfg.models, cfg.version)
    await live_catalog.load()
    pool.on_ready = live_catalog.on_worker_ready  # no worker serves with a stale catalog
    await pool.start()

    metrics = GatewayMetrics(state_path=getattr(store, "path", None))  # SQLite: its -wal file's size
    # One policy for the service's lines and the access log: the same user, the same pseudonym.
    user_ids = UserIdPolicy(raw=cfg.log_user_ids, salt=cfg.log_salt)
    service = RecommenderService(
        store,
        pool,
        live_catalog,
        max_in_flight=cfg.max_in_flight,
        user_ids=user_ids,
        feedback_limiter=RateLimiter(cfg.feedback_rate, cfg.feedback_burst),
        live_catalog=live_catalog,
        user_cache=user_state_cache(cfg, store),
        rank_batcher=RankBatcher(max_in_flight=cfg.rank_batch) if cfg.rank_batch > 0 else None,
    )
    # First the one place exceptions become statuses (undecodable requests INVALID_ARGUMENT,
    # not UNKNOWN), every call counted by method and status, traced and access-logged with its
    # request id: calls that auth refuses too (UNAUTHENTICATED, PERMISSION_DENIED). Then auth:
    # a caller without the right token gets its status and its bytes are never parsed.
    interceptors: list[grpc.aio.ServerInterceptor] = [
        ErrorStatus(
            metrics,
            access_log=AccessLog(user_ids, enabled=cfg.access_log),
            request_id_header=cfg.request_id_header,
        )
    ]
    interceptors += auth_interceptors(cfg)
    known_servers = server_ids()
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            *connection_age_options(cfg),
        ],
    )
    channelz_id = new_server_id(known_servers)
    recommender_pb2_grpc.add_RecommenderServicer_to_server(service, server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    gateway_health = GatewayHealth(health_servicer, pool, store, ("", SERVICE_NAME))
    enable_reflection(server, (SERVICE_NAME, HEALTH_SERVICE))
    address = f"{cfg.host}:{cfg.port}"
    if cfg.tls_cert and cfg.tls_key:
        creds = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    await gateway_health.update()  # SERVING: every worker is in rotation, the store just wrote its schema
    metrics_server = None
    if cfg.metrics:

        async def render() -> str:
            metrics.in_flight = service.admission.in_flight
            return await render_metrics(metrics, pool, mv.name)

        metrics_server = await _start_metrics(cfg, render)
    return Gateway(server, port, gateway_health, pool, store, service, metrics_server, channelz_id)


async def _start_metrics(cfg: ServeConfig, render: Any) -> asyncio.Server | None:
    """The metrics endpoint on --metrics-host (default: --host, itself loopback by default).
    On by default: when the default port is taken (a second gateway on one machine, say) the
    gateway serves without metrics and says so; a port asked for explicitly must bind."""
    host = cfg.metrics_host or cfg.host
    try:
        server = await start_metrics_server(host, cfg.metrics_port, render)
    except OSError as e:
        if cfg.metrics_port != DEFAULT_METRICS_PORT:
            raise
        LOG.warning("metrics: default port %d taken (%s); serving without metrics", cfg.metrics_port, e)
        return None
    mport = server.sockets[0].getsockname()[1]
    LOG.info("metrics on http://%s:%d/metrics", host, mport)
    print(f"recgen: metrics on http://{host}:{mport}/metrics", flush=True)
    return server


async def _flush_impressions(store: StateStore, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.2)
        except TimeoutError:
            pass
        await store.flush_impressions()


async def serve(cfg: ServeConfig) -> None:
    gw = await create_gateway(cfg)
    LOG.info("recgen serving on %s:%d with %d workers", cfg.host, gw.port, len(gw.pool.workers))
    print(f"recgen: serving on {cfg.host}:{gw.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    served = asyncio.Event()  # the public server has stopped: calls served in the drain log impressions too
    flusher = asyncio.create_task(_flush_impressions(gw.store, served))
    health_watch = asyncio.create_task(gw.health.run(stop))
    catalog_poll = asyncio.create_task(gw.service.live_catalog.run(stop)) if gw.service.live_catalog else None
    await stop.wait()

    LOG.info("draining (grace %.1f s)", cfg.grace)
    await health_watch
    await gw.health.drain()
    # Clients leave on their connection's GOAWAY while the server serves on; only then does it
    # stop (refusing new calls) and let the calls in flight finish.
    age = cfg.max_connection_age_s
    await drain(gw.server, gw.channelz_id, grace_s=cfg.grace, age_s=age)
    served.set()
    await flusher
    if catalog_poll is not None:
        await catalog_poll
    if gw.metrics_server is not None:
        gw.metrics_server.close()
    if gw.service.worker_calls.rank_batcher is not None:  # the workers need not wait on its streams
        await gw.service.worker_calls.rank_batcher.close()
    await gw.pool.stop()
    gw.store.close()
    LOG.info("stopped")


def run_serve(cfg: ServeConfig) -> int:
    _check_worker_addresses(cfg)
    asyncio.run(serve(cfg))
    return 0
