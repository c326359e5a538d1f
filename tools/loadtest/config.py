"""One load run's settings (LoadConfig) and the request kinds; no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

KINDS = ("recommend", "explain", "stream", "feedback")
# MovieLens-100K's item ids: the default catalog of `recgen export`.
DEFAULT_ITEMS: tuple[str, ...] = tuple(str(i) for i in range(1, 1683))
# Clients (closed loop) or in-flight requests (open loop) per gRPC channel. Each channel has its own
# TCP connection (see tools.harness.load.channels), so one HTTP/2 connection is never the bottleneck.
# Against the echo server on 2 cores, 2-4 connections served ~10-25 % more than one at concurrency
# 8-32; more did not help.
CLIENTS_PER_CHANNEL = 4
MAX_CHANNELS = 4


@dataclass
class LoadConfig:
    """One load run against one target. Open loop when `rate` is set, else closed loop."""

    target: str = "127.0.0.1:50051"
    name: str = ""  # label in tables, JSON and the plot; defaults to the target
    concurrency: int = 8  # closed loop: number of clients
    rate: float | None = None  # open loop: requests per second on a fixed schedule
    max_outstanding: int = 1024  # open loop: requests in flight at most; the rest wait (and age)
    duration: float | None = 10.0  # seconds of measured load (after warmup)
    max_requests: int | None = None  # stop issuing after this many (warmup included)
    warmup: float = 0.0  # seconds of load before measuring starts; not in the report
    timeout: float = 5.0  # caller's deadline per request, seconds
    text_timeout: float | None = None  # deadline for explain/stream requests; default: timeout
    explain_share: float = 0.0  # Recommend(explain=true)
    stream_share: float = 0.0  # StreamRecommend
    feedback_share: float = 0.0  # SendFeedback
    users: int = 1000  # user ids "load-user-0" .. "load-user-(N-1)"
    items: Sequence[str] = DEFAULT_ITEMS  # feedback item ids
    k: int = 10
    channels: int = 0  # 0: one per CLIENTS_PER_CHANNEL clients, at most MAX_CHANNELS
    seed: int = 0
    tool: str = "own"  # "own" or "ghz" (plain Recommend only)

    @property
    def mode(self) -> str:
        return "open" if self.rate is not None else "closed"

    def validate(self) -> None:
        shares = (self.explain_share, self.stream_share, self.feedback_share)
        if any(s < 0 for s in shares) or sum(shares) > 1.0 + 1e-9:
            raise ValueError("shares must be >= 0 and add up to at most 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("--rate must be > 0")
        if self.rate is None and self.concurrency < 1:
            raise ValueError("--concurrency must be >= 1")
        if self.duration is None and self.max_requests is None:
            raise ValueError("give --duration or --max-requests: a run must stop by itself")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("--duration must be > 0")
        if self.timeout <= 0 or self.max_outstanding < 1 or self.users < 1 or not self.items:
            raise ValueError("--timeout, --max-outstanding, --users and the item list must be positive")
        if self.tool not in ("own", "ghz"):
            raise ValueError("--tool is 'own' or 'ghz'")


def channel_count(cfg: LoadConfig) -> int:
    if cfg.channels > 0:
        return cfg.channels
    parallel = cfg.concurrency if cfg.mode == "closed" else cfg.max_outstanding
    return max(1, min(MAX_CHANNELS, math.ceil(parallel / CLIENTS_PER_CHANNEL)))
