"""One worker's connection: how to reach it, over which channel, with which credentials.

WorkerTls holds the gateway's TLS material for remote workers; a
Worker is one worker's address, process, channel and stubs, and the counters
the pool keeps on it. Channel options live here: fast reconnects for every
worker, HTTP/2 keepalive pings for remote ones. This module does not choose,
check, start, admit, supervise or restart workers; server/workers.py does.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2_grpc

from recgen.worker.v1 import worker_pb2_grpc

LOG = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    # A restarted worker must be reachable again within a second, not after
    # gRPC's default reconnect backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 8 << 20),
]
# A remote hop can go silent (a cut link, a frozen host) without any socket
# closing. HTTP/2 keepalive pings find that within ~4 s and fail the calls in
# flight with UNAVAILABLE, which Rank retries on another worker; without them
# those calls would hang until their deadline. Workers accept pings this often.
REMOTE_CHANNEL_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(frozen=True)
class WorkerTls:
    """The gateway's side of TLS to remote workers: the CA that signed their
    certificates, and optionally its own client certificate (mutual TLS)."""

    ca: str
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None  # check every worker's certificate against this name

    def credentials(self) -> grpc.ChannelCredentials:
        read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


@dataclass
class Worker:
    name: str
    address: str
    local: bool
    credentials: grpc.ChannelCredentials | None = None  # None: plaintext
    server_name: str | None = None  # TLS name when it is not the host in address
    proc: subprocess.Popen[bytes] | None = None
    channel: grpc.aio.Channel | None = None
    stub: worker_pb2_grpc.WorkerStub | None = None
    health: health_pb2_grpc.HealthStub | None = None
    healthy: bool = False
    in_flight: int = 0
    restarts: int = 0
    failed_checks: int = 0
    draining: bool = False  # its last health check answered NOT_SERVING (alive, finishing its calls)
    next_restart_at: float = 0.0
    backoff: float = 0.5
    retiring: bool = False  # gone from DNS: no new requests, closed once idle
    shard: int = 0  # the catalog shard it ranks (local: assigned; remote: its Stats at admission)
    shard_count: int = 1

    def connect(self) -> None:
        if self.local or self.address.startswith("unix:"):
            self.channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        elif self.credentials is None:
            self.channel = grpc.aio.insecure_channel(self.address, options=REMOTE_CHANNEL_OPTIONS)
        else:
            # Dialled by IP, checked against the name the certificate carries (the DNS
            # name it was found under): pod IPs change, the service name does not.
            options: list[tuple[str, str | int]] = list(REMOTE_CHANNEL_OPTIONS)
            if self.server_name:
                options.append(("grpc.ssl_target_name_override", self.server_name))
            self.channel = grpc.aio.secure_channel(self.address, self.credentials, options=options)
        self.stub = worker_pb2_grpc.WorkerStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close_channel(self, grace: float | None = None) -> None:
        if self.channel is not None:
            await self.channel.close(grace)
            self.channel = None
