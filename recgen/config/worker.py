"""`recgen worker`'s settings: one frozen dataclass, its defaults in one place.

`recgen worker` builds it from its flags; `recgen serve` holds one for its
local workers and starts each with `to_argv()` of a copy that names the
worker's own socket, shard and parent. worker/main.py reads it; nothing here
loads a model or opens a socket.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from recgen.config.flags import ConfigError, setting, to_argv


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected I/N, e.g. 0/2") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def _show_shard(shard: tuple[int, int]) -> str:
    return f"{shard[0]}/{shard[1]}"


@dataclass(frozen=True)
class WorkerConfig:
    models: str = setting("", required=True, help="model repository root")
    version: str | None = setting(None, help="model version (default: newest complete)")
    listen: str = setting("", required=True, per_process=True, help="unix:PATH or HOST:PORT")
    threads: int = setting(0, help="intra-op threads (0: the cores; under serve, shared among its workers)")
    device: str = setting("cpu", choices=("cpu", "cuda"))
    max_batch: int = setting(64, help="ranking requests batched together")
    max_delay_ms: float = setting(2.0, help="longest wait for a batch to fill, ms")
    max_queue: int = setting(256, help="requests waiting per queue; more get RESOURCE_EXHAUSTED")
    max_seqs: int = setting(32, help="LLM sequences decoded together")
    max_new_tokens: int = setting(48, help="LLM tokens per text unless the request asks for fewer")
    shard: tuple[int, int] = setting(
        (0, 1),
        per_process=True,
        parse=parse_shard,
        show=_show_shard,
        metavar="I/N",
        help="rank only catalog shard I of N (rows with row %% N == I); every shard still loads all "
        "item factors, which fold-in needs (default 0/1: the whole catalog)",
    )
    watch_interval: float = setting(
        2.0,
        help="seconds between checks of the repository's SERVING pointer for a hot swap (0: never; "
        "a worker started with --version never swaps)",
    )
    max_rss: int = setting(
        0,
        name="--worker-max-rss",
        metavar="MIB",
        help="MiB of resident memory past which a worker recycles itself: health NOT_SERVING, "
        "the calls in flight finish, it exits and `recgen serve` starts a fresh one (0: no limit)",
    )
    parent_pid: int = setting(0, per_process=True, help="exit when this process dies (set by `recgen serve`)")
    tls_cert: str | None = setting(
        None, per_process=True, help="PEM certificate chain for a HOST:PORT listener (enables TLS)"
    )
    tls_key: str | None = setting(None, per_process=True, help="PEM private key for --tls-cert")
    tls_client_ca: str | None = setting(
        None, per_process=True, help="PEM CA bundle: require gateway client certificates (mTLS)"
    )
    insecure: bool = setting(
        False,
        per_process=True,
        help="allow a plaintext HOST:PORT listener (unix sockets are always plaintext)",
    )

    def __post_init__(self) -> None:
        self.validate()

    @property
    def max_delay(self) -> float:
        """--max-delay-ms in seconds, as the batcher counts."""
        return self.max_delay_ms / 1000.0

    @property
    def shard_index(self) -> int:
        return self.shard[0]

    @property
    def shard_count(self) -> int:
        return self.shard[1]

    def to_argv(self) -> list[str]:
        """The `recgen worker` flags that give this config back (every field spelled out)."""
        return to_argv(self)

    def validate(self) -> None:
        for name in ("max_batch", "max_seqs", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("threads", "max_delay_ms", "watch_interval", "parent_pid", "max_rss"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.max_queue < self.max_batch:
            raise ConfigError(
                f"--max-queue {self.max_queue} < --max-batch {self.max_batch}: "
                "a full batch must fit in the queue"
            )
        if not 0 <= self.shard[0] < self.shard[1]:
            raise ConfigError(f"--shard {_show_shard(self.shard)}: need 0 <= I < N")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("--tls-client-ca needs --tls-cert/--tls-key")
        if not self.listen:  # `recgen serve`'s template: each local worker gets its socket
            return
        unix = self.listen.startswith("unix:")
        if self.tls_cert and unix:
            raise ConfigError(
                "--tls-cert is for HOST:PORT listeners; a unix socket is protected by its permissions"
            )
        if not (self.tls_cert or self.insecure or unix):
            raise ConfigError(
                f"--listen {self.listen} needs --tls-cert/--tls-key (or an explicit --insecure)"
            )
