"""`recgen serve`'s settings: the gateway's, plus a WorkerConfig for its local workers.

Every `recgen worker` flag that is not a worker's own (its socket, shard,
parent, listener TLS) is also a `serve` flag and reaches the local workers:
server/workers.py starts each with the WorkerConfig's `to_argv()`. The checks
here need no network and no server code; a worker address's syntax is
checked by server/discovery.py when the gateway starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from recgen.config.flags import ConfigError, holds_password, nested, setting
from recgen.config.worker import WorkerConfig

# Not 9100 (node_exporter's, often taken on the same host): 9464 is the port OpenTelemetry's
# Prometheus exporter uses by default, rarely taken otherwise.
DEFAULT_METRICS_PORT = 9464


def network_addresses(values: tuple[str, ...]) -> list[str]:
    """The --worker-address entries (repeated and/or comma-separated) that are not unix sockets."""
    entries = (v.strip() for raw in values for v in raw.split(","))
    return [v for v in entries if v and not v.startswith("unix:")]


@dataclass(frozen=True)
class ServeConfig:
    # --models, --version and the local workers' tuning (--threads, --max-seqs, ...).
    worker: WorkerConfig = nested(WorkerConfig)
    host: str = setting("127.0.0.1", help="address of the public gRPC port (0.0.0.0: every interface)")
    port: int = setting(50051, help="the public gRPC port (0: any free port, printed when serving)")
    workers: int = setting(2, help="local worker processes")
    shards: int = setting(
        1,
        help="catalog shards: local worker i ranks shard i %% N, each request asks one worker of every "
        "shard and merges their answers exactly (docs/scaling.md)",
    )
    worker_address: tuple[str, ...] = setting(
        (),
        help="remote workers: HOST:PORT, unix:PATH or dns:///NAME:PORT (every address NAME "
        "resolves to, re-resolved every 5 s); repeatable or comma-separated",
    )
    worker_tls_ca: str | None = setting(
        None, help="PEM CA that signed the remote workers' certificates (enables TLS)"
    )
    worker_tls_cert: str | None = setting(
        None, help="PEM client certificate for mutual TLS to remote workers"
    )
    worker_tls_key: str | None = setting(None, help="PEM private key for --worker-tls-cert")
    worker_tls_server_name: str | None = setting(
        None,
        help="name every remote worker's certificate is checked against "
        "(default: the host in its address, or the DNS name it was found under)",
    )
    worker_insecure: bool = setting(
        False, help="speak plaintext to remote HOST:PORT workers (only on a network you trust)"
    )
    state: str = setting(
        "var/state.db",
        secret=holds_password,
        help="state store: a SQLite file, or postgresql://USER@HOST/DB for several gateways on shared state "
        "(a URL with a password: RECGEN_STATE or --state-file, never this flag)",
    )
    synchronous: str = setting(
        "FULL",
        choices=("FULL", "NORMAL"),
        help="durability (FULL: acknowledged = on disk; NORMAL: SQLite synchronous=NORMAL,"
        " PostgreSQL synchronous_commit=off)",
    )
    user_cache: int = setting(
        10_000,
        help="users whose recent events the gateway keeps in memory (SQLite state only; 0: off;"
        " up to ~80 KB per user at the 200-event history cap)",
    )
    rank_batch: int = setting(
        1,
        help="rank batches in flight per worker, each carrying the Rank calls waiting for it"
        " (0: one Rank RPC per request)",
    )
    grace: float = setting(10.0, help="drain period on SIGTERM, seconds")
    tls_cert: str | None = setting(None, help="PEM certificate chain for the public port (enables TLS)")
    tls_key: str | None = setting(None, help="PEM private key for --tls-cert")
    tls_client_ca: str | None = setting(None, help="PEM CA bundle: require client certificates (mTLS)")
    auth_tokens: str | None = setting(
        None, help="file of 'ROLE TOKEN' lines (ROLE: serve|admin); enables token auth"
    )
    # Open by default: probes and load balancers carry no tokens, and grpcurl / buf curl ask
    # reflection before anything else (it shows the public .proto, nothing of the data).
    auth_health: bool = setting(False, help="with --auth-tokens, grpc.health.v1 needs a token too")
    auth_reflection: bool = setting(
        False, help="with --auth-tokens, server reflection (v1 and v1alpha) needs a token too"
    )
    feedback_rate: float = setting(50.0, help="SendFeedback events per second per user (0: no limit)")
    feedback_burst: float = setting(200.0, help="SendFeedback events a user may send at once above the rate")
    metrics: bool = setting(True, both=True, help="serve Prometheus metrics over HTTP")
    metrics_port: int = setting(
        DEFAULT_METRICS_PORT,
        help="the metrics HTTP port (0: any free port); if 9464 is taken and was not asked for, "
        "serve goes on without metrics",
    )
    metrics_host: str | None = setting(
        None, help="the metrics HTTP address (default: --host, itself 127.0.0.1 unless set)"
    )
    access_log: bool = setting(
        True, both=True, help="one INFO line per call (failures: WARNING) on the recgen.access logger"
    )
    request_id_header: bool = setting(
        False,
        both=True,
        help="also send each call's x-request-id in the response headers (it is always in the "
        "trailers, and Recommend's in its request_id): a separate HTTP/2 write, ~150 CPU-µs per call",
    )
    log_user_ids: bool = setting(False, help="log raw user ids (default: keyed pseudonyms)")
    log_salt: str | None = setting(
        None,
        secret=bool,
        help="key for user-id pseudonyms, to keep them across restarts (default: random per start)",
    )
    max_in_flight: int = setting(256, help="admission limit; excess gets RESOURCE_EXHAUSTED")
    max_connection_age_s: float = setting(
        300.0,
        help="close (GOAWAY) each client connection after this age so load balancers re-balance (0: never); "
        "at most half of --grace, a SIGTERM drain moves every client off before it stops, so no call "
        "ends CANCELLED (but large requests and long imports then meet a GOAWAY more often)",
    )
    max_connection_age_grace_s: float = setting(
        30.0, help="time calls in flight on an aged connection get to finish"
    )

    def __post_init__(self) -> None:
        self.validate()

    @property
    def models(self) -> str:
        return self.worker.models

    @property
    def version(self) -> str | None:
        """None: workers follow the repository's SERVING pointer (hot swap)."""
        return self.worker.version

    def validate(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("--tls-client-ca needs --tls-cert/--tls-key")
        if (self.auth_health or self.auth_reflection) and not self.auth_tokens:
            raise ConfigError("--auth-health and --auth-reflection need --auth-tokens")
        if bool(self.worker_tls_cert) != bool(self.worker_tls_key):
            raise ConfigError("--worker-tls-cert and --worker-tls-key go together")
        if self.worker_tls_cert and not self.worker_tls_ca:
            raise ConfigError("--worker-tls-cert needs --worker-tls-ca")
        if self.worker_tls_ca and self.worker_insecure:
            raise ConfigError("--worker-tls-ca and --worker-insecure contradict each other")
        remote = network_addresses(self.worker_address)
        if remote and not (self.worker_tls_ca or self.worker_insecure):
            raise ConfigError(
                f"remote workers {', '.join(remote)} need --worker-tls-ca (or an explicit --worker-insecure)"
            )
        if self.shards < 1:
            raise ConfigError(f"--shards must be >= 1, got {self.shards}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if not self.worker_address and self.workers < self.shards:
            raise ConfigError(
                f"--workers {self.workers} < --shards {self.shards}: every shard needs a worker"
            )
        if min(self.max_connection_age_s, self.max_connection_age_grace_s) < 0:
            raise ConfigError("--max-connection-age-s and --max-connection-age-grace-s must be >= 0")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected 0..65535")
        for name in ("user_cache", "rank_batch", "grace", "feedback_rate", "feedback_burst"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.max_in_flight < 1:
            raise ConfigError(f"--max-in-flight must be >= 1, got {self.max_in_flight}")
