"""recgen's own asyncio gRPC load generator for recgen.v1.Recommender.

    python -m tools.loadtest --target 127.0.0.1:50051 --concurrency 8 --duration 20
    python -m tools.loadtest --target 127.0.0.1:50051 --sweep-rates 50,100,200 --echo \\
        --json docs/loadtest.json --plot docs/loadtest.png

Two ways to load a server:

* closed loop (`--concurrency N`): N clients, each sending its next request
  when the previous answer arrived. The server sets the pace, so this finds
  the throughput ceiling, but it hides queueing: a slow answer also delays
  the requests that would have come meanwhile.
* open loop (`--rate R`): requests are due on a fixed schedule whatever the
  server does. Latency counts from each request's *scheduled* send time, so
  time spent waiting (in the server, in the network, or in this client when
  `--max-outstanding` requests are already in flight) is in the figure.
  That is the correction for coordinated omission: a stalled server cannot
  make the load tool politely stop sending and thereby hide the stall.

The caller's deadline (`--timeout`) counts from the same scheduled time: a
request still waiting in this client when its deadline has passed is never
sent and counts as DEADLINE_EXCEEDED (and in `expired_before_send`).

Library use: `report = await run_load(LoadConfig(target=..., rate=100))`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import logging
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pb_grpc

LOG = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent

KINDS = ("recommend", "explain", "stream", "feedback")
# MovieLens-100K's item ids: the default catalog of `recgen export`.
DEFAULT_ITEMS: tuple[str, ...] = tuple(str(i) for i in range(1, 1683))
# Clients (closed loop) or in-flight requests (open loop) per gRPC channel. Each channel has its own TCP
# connection (see _open_channels), so one HTTP/2 connection is never the bottleneck. Against the echo
# server on 2 cores, 2-4 connections served ~10-25 % more than one at concurrency 8-32; more did not help.
CLIENTS_PER_CHANNEL = 4
MAX_CHANNELS = 4
# Open loop: how early a request may be released (asyncio's timer resolution); see _open_loop.
SCHEDULE_SLACK = 0.001
_FEEDBACK_TYPES = (
    pb.FEEDBACK_TYPE_VIEW,
    pb.FEEDBACK_TYPE_CLICK,
    pb.FEEDBACK_TYPE_PURCHASE,
    pb.FEEDBACK_TYPE_RATE,
)
_QUANTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


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


def _pct(values: Sequence[float], keys: Sequence[tuple[str, float]] = _QUANTILES) -> dict[str, float] | None:
    """Percentiles in milliseconds of values in seconds; None when there are none."""
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    out = {
        k: round(float(v), 3)
        for (k, _), v in zip(keys, np.percentile(arr, [q for _, q in keys]), strict=True)
    }
    out["mean"] = round(float(arr.mean()), 3)
    out["max"] = round(float(arr.max()), 3)
    return out


@dataclass
class KindStats:
    """One request kind: counts per gRPC status code and latency of its OK answers."""

    requests: int
    ok: int
    status_counts: dict[str, int]
    latency_ms: dict[str, float] | None  # OK answers only, from the scheduled send time
    first_piece_ms: dict[str, float] | None = None  # streams: to the first text piece
    first_items_ms: dict[str, float] | None = None  # streams: to the items event


@dataclass
class Report:
    """What one load run measured (warmup excluded)."""

    name: str
    target: str
    mode: str  # "closed" | "open"
    concurrency: int | None
    rate: float | None  # offered rate (open loop)
    tool: str
    elapsed_s: float  # from the start of measuring to the last answer
    requests: int  # issued; each has exactly one status in status_counts
    sent: int  # actually put on the wire
    expired_before_send: int  # deadline passed while waiting for --max-outstanding
    ok: int
    errors: int
    throughput: float  # OK answers per second
    status_counts: dict[str, int]
    latency_ms: dict[str, float] | None  # all OK answers
    kinds: dict[str, KindStats]
    send_lag_ms: dict[str, float] | None = None  # open loop: actual minus scheduled send time
    client_cpu: float = 0.0  # this process's CPU seconds per wall second (1.0 = one core busy)
    host_load: float = 0.0  # 1-minute load average when the run started: was the machine busy?
    error_examples: dict[str, str] = field(default_factory=dict)  # status code -> first message seen

    @property
    def level(self) -> float:
        return float((self.rate if self.mode == "open" else self.concurrency) or 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """Inverse of to_dict, e.g. to re-plot a JSON file written by --json."""
        return cls(**{**d, "kinds": {k: KindStats(**v) for k, v in d["kinds"].items()}})

    def table(self) -> str:
        load = f"rate {self.rate:g}/s" if self.mode == "open" else f"concurrency {self.concurrency}"
        lines = [
            f"{self.name} ({self.target})  {self.mode} loop, {load}, {self.elapsed_s:.1f} s, "
            f"tool {self.tool}, client cpu {self.client_cpu:.2f}, host load {self.host_load:.1f}",
            f"  {'kind':<10}{'requests':>9}{'ok':>9}{'ok/s':>9}{'p50 ms':>9}{'p90 ms':>9}"
            f"{'p99 ms':>9}{'p99.9 ms':>10}{'errors':>8}",
        ]
        rows = [(k, s) for k, s in self.kinds.items() if s.requests]
        rows.append(("all", KindStats(self.requests, self.ok, self.status_counts, self.latency_ms)))
        for kind, s in rows:
            lat = s.latency_ms or {}
            cells = "".join(f"{lat[q]:>9.2f}" if q in lat else f"{'-':>9}" for q in ("p50", "p90", "p99"))
            p999 = f"{lat['p99_9']:>10.2f}" if "p99_9" in lat else f"{'-':>10}"
            rate = s.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0
            lines.append(
                f"  {kind:<10}{s.requests:>9}{s.ok:>9}{rate:>9.1f}{cells}{p999}{s.requests - s.ok:>8}"
            )
            if s.first_piece_ms:
                lines.append(
                    f"  {'':<10}first text piece p50 {s.first_piece_ms['p50']:.2f} ms, "
                    f"p99 {s.first_piece_ms['p99']:.2f} ms"
                )
        lines.append("  status: " + ", ".join(f"{c} {n}" for c, n in sorted(self.status_counts.items())))
        for code, msg in sorted(self.error_examples.items()):
            lines.append(f"  e.g. {code}: {msg[:120]}")
        if self.expired_before_send:
            lines.append(f"  {self.expired_before_send} requests expired waiting for --max-outstanding")
        if self.send_lag_ms:
            lines.append(
                f"  send lag behind schedule p50 {self.send_lag_ms['p50']:.2f} ms, "
                f"p99 {self.send_lag_ms['p99']:.2f} ms"
            )
        return "\n".join(lines)


class _Recorder:
    """Outcomes of requests scheduled at or after `measure_from` (earlier ones are warmup)."""

    def __init__(self) -> None:
        self.measure_from = math.inf  # set by start()
        self.latency: dict[str, list[float]] = {k: [] for k in KINDS}
        self.codes: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
        self.first_piece: list[float] = []
        self.first_items: list[float] = []
        self.send_lag: list[float] = []
        self.sent = 0
        self.expired = 0
        self.error_examples: dict[str, str] = {}  # the first error message seen per status code
        self.last_done = 0.0

    def start(self, warmup: float) -> float:
        """Called when the load begins; returns that time. Measuring begins `warmup` seconds later."""
        t0 = time.perf_counter()
        self.measure_from = self.last_done = t0 + warmup
        return t0

    def done(self, kind: str, code: str, origin: float, t_end: float, measured: bool) -> None:
        if not measured:
            return
        self.codes[kind][code] += 1
        if code == "OK":
            self.latency[kind].append(t_end - origin)
        if t_end > self.last_done:
            self.last_done = t_end

    def report(self, cfg: LoadConfig, cpu_s: float, wall_s: float, host_load: float) -> Report:
        elapsed = max(self.last_done - self.measure_from, 1e-9)
        kinds: dict[str, KindStats] = {}
        total: Counter[str] = Counter()
        for k in KINDS:
            c = self.codes[k]
            total.update(c)
            kinds[k] = KindStats(
                requests=sum(c.values()), ok=c["OK"], status_counts=dict(c), latency_ms=_pct(self.latency[k])
            )
        kinds["stream"].first_piece_ms = _pct(self.first_piece)
        kinds["stream"].first_items_ms = _pct(self.first_items)
        ok = total["OK"]
        requests = sum(total.values())
        return Report(
            name=cfg.name or cfg.target,
            target=cfg.target,
            mode=cfg.mode,
            concurrency=cfg.concurrency if cfg.mode == "closed" else None,
            rate=cfg.rate,
            tool="own",
            elapsed_s=round(elapsed, 4),
            requests=requests,
            sent=self.sent,
            expired_before_send=self.expired,
            ok=ok,
            errors=requests - ok,
            throughput=round(ok / elapsed, 2),
            status_counts=dict(total),
            latency_ms=_pct(list(itertools.chain.from_iterable(self.latency.values()))),
            kinds=kinds,
            send_lag_ms=_pct(self.send_lag) if cfg.mode == "open" else None,
            client_cpu=round(cpu_s / max(wall_s, 1e-9), 3),
            host_load=host_load,
            error_examples=dict(self.error_examples),
        )


class _Requester:
    """Builds and sends one request of a randomly chosen kind and records its outcome."""

    def __init__(self, cfg: LoadConfig, rec: _Recorder) -> None:
        self.cfg, self.rec = cfg, rec
        self.rng = random.Random(cfg.seed)
        # Cumulative thresholds: one random draw picks the kind.
        e, s, f = cfg.explain_share, cfg.stream_share, cfg.feedback_share
        self._cuts = ((e, "explain"), (e + s, "stream"), (e + s + f, "feedback"))
        self._users = [f"load-user-{i}" for i in range(cfg.users)]
        self._items = list(cfg.items)
        # Unique per run, so a rerun against the same state store never replays event ids.
        self._run_id = uuid.uuid4().hex[:12]
        self._events = itertools.count()
        self._text_timeout = cfg.text_timeout or cfg.timeout

    def _kind(self) -> str:
        r = self.rng.random()
        for cut, kind in self._cuts:
            if r < cut:
                return kind
        return "recommend"

    async def issue(self, stub: pb_grpc.RecommenderStub, t_sched: float) -> None:
        """Send one request due at t_sched and record its outcome, timed from t_sched."""
        kind = self._kind()
        deadline = self._text_timeout if kind in ("explain", "stream") else self.cfg.timeout
        measured = t_sched >= self.rec.measure_from  # earlier ones are warmup
        now = time.perf_counter()
        if measured and self.cfg.mode == "open":
            self.rec.send_lag.append(max(0.0, now - t_sched))
        # The clock starts at the scheduled time, or at the actual send when the scheduler released the
        # request a little early (see _open_loop): never later than the caller wanted to send.
        origin = min(t_sched, now)
        remaining = deadline - (now - origin)
        if remaining <= 0:
            # The caller's deadline passed while this request waited in the client: what a real caller
            # would see is DEADLINE_EXCEEDED, so that is what is counted.
            self.rec.expired += measured
            self.rec.done(kind, "DEADLINE_EXCEEDED", origin, now, measured)
            return
        self.rec.sent += measured
        user = self._users[self.rng.randrange(len(self._users))]
        code = "OK"
        try:
            if kind == "stream":
                code = await self._stream(stub, user, origin, remaining, measured)
            elif kind == "feedback":
                await stub.SendFeedback(self._feedback(user), timeout=remaining)
            else:
                msg = pb.RecommendRequest(user_id=user, k=self.cfg.k, explain=kind == "explain")
                await stub.Recommend(msg, timeout=remaining)
        except grpc.aio.AioRpcError as e:
            code = e.code().name
            if measured:
                self.rec.error_examples.setdefault(code, e.details() or "")
                LOG.debug("%s: %s", code, e.debug_error_string())
        except asyncio.CancelledError:
            self.rec.done(kind, "CANCELLED", origin, time.perf_counter(), measured)
            raise
        self.rec.done(kind, code, origin, time.perf_counter(), measured)

    async def _stream(
        self, stub: pb_grpc.RecommenderStub, user: str, origin: float, remaining: float, measured: bool
    ) -> str:
        req = pb.StreamRecommendRequest(request=pb.RecommendRequest(user_id=user, k=self.cfg.k, explain=True))
        call = stub.StreamRecommend(req, timeout=remaining)
        first_items = first_piece = None
        final = False
        async for ev in call:
            which = ev.WhichOneof("event")
            if which == "text_piece":
                if first_piece is None:
                    first_piece = time.perf_counter()
            elif which == "items":
                if first_items is None:
                    first_items = time.perf_counter()
            elif which == "final":
                final = True
        if not final:
            # Status OK but the protocol's last event is missing: an error, never a success.
            return "STREAM_WITHOUT_FINAL"
        if measured:
            if first_piece is not None:
                self.rec.first_piece.append(first_piece - origin)
            if first_items is not None:
                self.rec.first_items.append(first_items - origin)
        return "OK"

    def _feedback(self, user: str) -> pb.SendFeedbackRequest:
        ftype = _FEEDBACK_TYPES[self.rng.randrange(len(_FEEDBACK_TYPES))]
        req = pb.SendFeedbackRequest(
            event_id=f"load-{self._run_id}-{next(self._events)}",
            user_id=user,
            item_id=self._items[self.rng.randrange(len(self._items))],
            type=ftype,
        )
        if ftype == pb.FEEDBACK_TYPE_RATE:
            req.value = float(self.rng.randint(1, 5))
        return req


def _channel_count(cfg: LoadConfig) -> int:
    if cfg.channels > 0:
        return cfg.channels
    parallel = cfg.concurrency if cfg.mode == "closed" else cfg.max_outstanding
    return max(1, min(MAX_CHANNELS, math.ceil(parallel / CLIENTS_PER_CHANNEL)))


async def _open_channels(target: str, n: int, connect_wait: float) -> list[grpc.aio.Channel]:
    # A local subchannel pool gives each channel its own TCP connection; otherwise grpc shares one
    # connection among all channels to the same target and the "channels" would be a fiction.
    chans = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(n)
    ]

    async def connect(ch: grpc.aio.Channel) -> None:
        # Wait for READY or a failure, so connection set-up is not in the first latencies but a
        # target that refuses connections is not waited for: its errors are counted instead.
        state = ch.get_state(try_to_connect=True)
        while state not in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
            await ch.wait_for_state_change(state)
            state = ch.get_state()

    try:
        await asyncio.wait_for(asyncio.gather(*(connect(c) for c in chans)), connect_wait)
    except TimeoutError:
        LOG.warning("%s: not all channels connected within %.1f s", target, connect_wait)
    return chans


async def run_load(cfg: LoadConfig) -> Report:
    """Run one bounded load (closed or open loop) and return what it measured."""
    cfg.validate()
    if cfg.tool == "ghz":
        if _ghz_can_run(cfg):
            return await asyncio.to_thread(run_ghz, cfg)
        cfg = dataclasses.replace(cfg, tool="own")
    chans = await _open_channels(cfg.target, _channel_count(cfg), min(5.0, cfg.timeout))
    stubs = [pb_grpc.RecommenderStub(c) for c in chans]
    load = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    rec = _Recorder()
    req = _Requester(cfg, rec)
    # A watchdog on top of the per-request deadlines: the run always stops by itself.
    budget = (
        None
        if cfg.duration is None
        else cfg.warmup + cfg.duration + max(cfg.timeout, cfg.text_timeout or 0) + 30.0
    )
    try:
        async with asyncio.timeout(budget):
            if cfg.mode == "closed":
                await _closed_loop(cfg, req, stubs)
            else:
                await _open_loop(cfg, req, stubs)
    except TimeoutError:
        LOG.error("%s: run did not finish within its %.0f s budget; stopped", cfg.target, budget)
    finally:
        await asyncio.gather(*(c.close() for c in chans))
    return rec.report(cfg, time.process_time() - cpu0, time.perf_counter() - t0, load)


def _bounds(cfg: LoadConfig, rec: _Recorder) -> tuple[float, float]:
    """(end time, request limit) of a run whose load has just started."""
    end = rec.measure_from + cfg.duration if cfg.duration is not None else math.inf
    return end, (cfg.max_requests if cfg.max_requests is not None else math.inf)


async def _closed_loop(cfg: LoadConfig, req: _Requester, stubs: list[pb_grpc.RecommenderStub]) -> None:
    issued = 0

    async def client(stub: pb_grpc.RecommenderStub) -> None:
        nonlocal issued
        while issued < limit:
            now = time.perf_counter()
            if now >= end:
                return
            issued += 1
            await req.issue(stub, now)

    req.rec.start(cfg.warmup)
    end, limit = _bounds(cfg, req.rec)
    await asyncio.gather(*(client(stubs[i % len(stubs)]) for i in range(cfg.concurrency)))


async def _open_loop(cfg: LoadConfig, req: _Requester, stubs: list[pb_grpc.RecommenderStub]) -> None:
    assert cfg.rate is not None
    # Scheduled send times go into a FIFO; max_outstanding senders take them. When all senders are
    # busy the times wait in the queue and keep aging: that wait is part of the measured latency.
    queue: asyncio.Queue[float | None] = asyncio.Queue()

    async def sender(stub: pb_grpc.RecommenderStub) -> None:
        while (t_sched := await queue.get()) is not None:
            await req.issue(stub, t_sched)

    senders = [asyncio.create_task(sender(stubs[i % len(stubs)])) for i in range(cfg.max_outstanding)]
    try:
        t0 = req.rec.start(cfg.warmup)  # after creating the senders: that takes a few ms
        end, limit = _bounds(cfg, req.rec)
        interval = 1.0 / cfg.rate
        # The measured window lasts at least as long as the schedule, also when the last answer came
        # before the schedule's end (the rate offered is over the whole window).
        req.rec.last_done = max(req.rec.last_done, min(end, t0 + limit * interval))
        for i in itertools.count():
            t_i = t0 + i * interval
            if t_i >= end or i >= limit:
                break
            # asyncio's epoll wait rounds up to whole milliseconds, so a sleep until t_i wakes up to ~1 ms
            # late and that lag would be charged to the server. Waking SCHEDULE_SLACK early and releasing
            # the request then (timed from its actual send) keeps the client's timer out of the figures.
            delay = t_i - time.perf_counter() - SCHEDULE_SLACK
            if delay > 0:
                await asyncio.sleep(delay)
            # If the loop woke late, overdue requests are queued at once with their scheduled times.
            queue.put_nowait(t_i)
        for _ in senders:
            queue.put_nowait(None)
        await asyncio.gather(*senders)
    finally:
        for t in senders:
            t.cancel()


async def run_points(cfg: LoadConfig, points: Sequence[tuple[str, float]]) -> list[Report]:
    """One run per (mode, level): ("closed", concurrency) or ("open", rate); the latency-vs-load data."""
    reports = []
    for mode, level in points:
        if mode == "closed":
            point = dataclasses.replace(cfg, rate=None, concurrency=int(level))
        else:
            point = dataclasses.replace(cfg, rate=float(level))
        rep = await run_load(point)
        LOG.info("%s %s %g: %.1f ok/s", rep.name, mode, level, rep.throughput)
        reports.append(rep)
    return reports


async def wait_ready(target: str, timeout: float) -> None:
    """Wait until the target's grpc.health.v1 service says SERVING (or, without one, accepts calls)."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{target} not serving after {timeout:.0f} s")


# --- ghz (plain Recommend only; ghz is not installable on these machines, so this stays small) ---


def _upper_snake(code: str) -> str:
    return "OK" if code.upper() == "OK" else re.sub(r"(?<!^)(?=[A-Z])", "_", code).upper()


def report_from_ghz(doc: dict[str, Any], cfg: LoadConfig) -> Report:
    """Map ghz's `--format json` summary to a Report (ghz gives no p99.9; its open loop is not
    corrected for coordinated omission: it times from the actual send)."""
    codes = {_upper_snake(k): int(v) for k, v in (doc.get("statusCodeDistribution") or {}).items()}
    elapsed = float(doc.get("total", 0)) / 1e9
    ok = codes.get("OK", 0)
    dist = {int(d["percentage"]): float(d["latency"]) / 1e6 for d in doc.get("latencyDistribution") or []}
    lat = {k: round(dist[int(q)], 3) for k, q in _QUANTILES if q == int(q) and int(q) in dist} or None
    if lat is not None:
        lat["mean"] = round(float(doc.get("average", 0)) / 1e6, 3)
        lat["max"] = round(float(doc.get("slowest", 0)) / 1e6, 3)
    requests = sum(codes.values())
    kinds = {k: KindStats(0, 0, {}, None) for k in KINDS}
    kinds["recommend"] = KindStats(requests, ok, codes, lat)
    return Report(
        name=cfg.name or cfg.target,
        target=cfg.target,
        mode=cfg.mode,
        concurrency=cfg.concurrency if cfg.mode == "closed" else None,
        rate=cfg.rate,
        tool="ghz",
        elapsed_s=round(elapsed, 4),
        requests=requests,
        sent=requests,
        expired_before_send=0,
        ok=ok,
        errors=requests - ok,
        throughput=round(ok / elapsed, 2) if elapsed else 0.0,
        status_counts=codes,
        latency_ms=lat,
        kinds=kinds,
    )


def _ghz_can_run(cfg: LoadConfig) -> bool:
    if shutil.which("ghz") is None:
        LOG.warning("--tool ghz: ghz is not on PATH; using the own generator")
        return False
    if cfg.explain_share or cfg.stream_share or cfg.feedback_share or cfg.warmup:
        LOG.warning("--tool ghz runs plain Recommend without warmup only; using the own generator")
        return False
    return True


def run_ghz(cfg: LoadConfig) -> Report:
    exe = shutil.which("ghz")
    assert exe is not None
    data = {"user_id": f"load-user-{{{{randomInt 0 {cfg.users}}}}}", "k": cfg.k}
    cmd = [
        exe,
        "--insecure",
        "--import-paths",
        str(ROOT / "protos"),
        "--proto",
        "recgen/v1/recommender.proto",
        "--call",
        "recgen.v1.Recommender.Recommend",
        "-d",
        json.dumps(data),
        "--format",
        "json",
        "--timeout",
        f"{cfg.timeout}s",
        "--connections",
        str(_channel_count(cfg)),
    ]
    if cfg.mode == "open":
        cmd += ["--rps", str(math.ceil(cfg.rate or 1)), "-c", str(cfg.max_outstanding)]
    else:
        cmd += ["-c", str(cfg.concurrency)]
    cmd += ["-z", f"{cfg.duration}s"] if cfg.duration else ["-n", str(cfg.max_requests)]
    cmd.append(cfg.target)
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=(cfg.duration or 600) + cfg.timeout + 60
    )
    return report_from_ghz(json.loads(out.stdout), cfg)


# --- output ---


def meta() -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "argv": sys.argv,
    }


def workload(cfg: LoadConfig) -> dict[str, Any]:
    """The request mix and bounds of a config, for the JSON file (the item list as its length)."""
    d = dataclasses.asdict(cfg)
    d["items"] = len(cfg.items)
    for k in ("target", "name", "concurrency", "rate"):
        d.pop(k)
    return d


def write_json(path: str | Path, reports: Sequence[Report], extra: dict[str, Any] | None = None) -> None:
    doc = {"meta": {**meta(), **(extra or {})}, "reports": [r.to_dict() for r in reports]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def summary_table(reports: Sequence[Report]) -> str:
    lines = [
        f"{'target':<16}{'mode':<7}{'level':>8}{'ok/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
        f"{'errors':>8}{'cpu':>6}"
    ]
    for r in reports:
        lat = r.latency_ms or {}
        cells = "".join(f"{lat[q]:>9.2f}" if q in lat else f"{'-':>9}" for q in ("p50", "p99"))
        p999 = f"{lat['p99_9']:>10.2f}" if "p99_9" in lat else f"{'-':>10}"
        lines.append(
            f"{r.name[:15]:<16}{r.mode:<7}{r.level:>8g}{r.throughput:>10.1f}{cells}{p999}"
            f"{r.errors:>8}{r.client_cpu:>6.2f}"
        )
    return "\n".join(lines)


_KIND_COLORS = {
    "recommend": "tab:blue",
    "explain": "tab:orange",
    "stream": "tab:green",
    "feedback": "tab:red",
}
BASELINE_NAME = "echo"


def plot(reports: Sequence[Report], path: str | Path) -> None:
    """PNG: one row per target; latency of OK answers (p50 solid, p99 dashed) per request kind versus
    load, one column per mode, and for open loops what was served versus what was offered. Rows other
    than the echo baseline also show the baseline's latency in grey."""
    import matplotlib

    matplotlib.use("Agg")  # no display here; must precede pyplot
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.name for r in reports))
    modes = [m for m in ("closed", "open") if any(r.mode == m for r in reports)]
    ncols = len(modes) + (1 if "open" in modes else 0)
    fig, axes = plt.subplots(len(names), ncols, figsize=(6.0 * ncols, 4.2 * len(names)), squeeze=False)
    for row, name in zip(axes, names, strict=True):
        for ax, mode in zip(row, modes, strict=False):
            reps = sorted((r for r in reports if r.name == name and r.mode == mode), key=lambda r: r.level)
            base = (
                sorted(
                    (r for r in reports if r.name == BASELINE_NAME and r.mode == mode), key=lambda r: r.level
                )
                if name != BASELINE_NAME
                else []
            )
            _latency_panel(ax, reps, base, mode)
            ax.set_title(f"{name}: {mode} loop", fontsize=10)
        if "open" in modes:
            _served_panel(
                row[-1],
                sorted((r for r in reports if r.name == name and r.mode == "open"), key=lambda r: r.level),
            )
            row[-1].set_title(f"{name}: open loop, served vs offered", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _x(r: Report) -> float:
    # Open loop: the load is what was offered. Closed loop: the load is what the clients got served.
    return (r.rate or 0.0) if r.mode == "open" else r.throughput


def _latency_panel(ax: Any, reps: list[Report], base: list[Report], mode: str) -> None:
    annotated = False
    for kind in KINDS:
        pts = [(r, lat) for r in reps if (lat := r.kinds[kind].latency_ms)]
        if not pts:
            continue
        xs = [_x(r) for r, _ in pts]
        c = _KIND_COLORS[kind]
        ax.plot(xs, [lat["p50"] for _, lat in pts], "o-", color=c, label=f"{kind} p50")
        ax.plot(xs, [lat["p99"] for _, lat in pts], "s--", color=c, label=f"{kind} p99")
        if mode == "closed" and not annotated:
            annotated = True
            for (r, lat), x in zip(pts, xs, strict=True):
                ax.annotate(
                    f"c={r.concurrency}",
                    (x, lat["p99"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 4),
                )
    pts_b = [(r, lat) for r in base if (lat := r.latency_ms)]
    if pts_b:
        xs = [_x(r) for r, _ in pts_b]
        ax.plot(
            xs,
            [lat["p50"] for _, lat in pts_b],
            "o-",
            color="grey",
            lw=1,
            ms=3,
            label=f"{BASELINE_NAME} (all) p50",
        )
        ax.plot(
            xs,
            [lat["p99"] for _, lat in pts_b],
            "s--",
            color="grey",
            lw=1,
            ms=3,
            label=f"{BASELINE_NAME} (all) p99",
        )
    ax.set_yscale("log")
    ax.set_ylabel("latency of OK answers (ms)")
    ax.set_xlabel(
        "offered load (requests/s, fixed schedule; latency from scheduled send)"
        if mode == "open"
        else "throughput (OK answers/s)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def _served_panel(ax: Any, reps: list[Report]) -> None:
    xs = [r.rate or 0.0 for r in reps]
    ax.plot(xs, [r.throughput for r in reps], "o-", color="tab:blue", label="OK answers/s")
    ax.plot(xs, [r.errors / r.elapsed_s for r in reps], "x:", color="tab:red", label="errors/s")
    ax.plot([0, max(xs, default=1.0)], [0, max(xs, default=1.0)], color="grey", lw=0.8, label="offered")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("answers/s")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


# --- command line ---


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.loadtest", description=__doc__.split("\n\n")[0], epilog="See docs/loadtest.md."
    )
    p.add_argument("--target", help="HOST:PORT of a recgen.v1.Recommender server")
    p.add_argument("--name", default="", help="label of --target in the output (default: recgen)")
    p.add_argument(
        "--echo",
        action="store_true",
        help="also start tools.echo_server and run the same load against it (the baseline)",
    )
    mode = p.add_argument_group("load (closed loop unless a rate is given)")
    mode.add_argument("--concurrency", type=int, default=None, help="closed loop: clients (default 8)")
    mode.add_argument("--rate", type=float, default=None, help="open loop: requests/s on a fixed schedule")
    mode.add_argument(
        "--sweep-concurrency",
        type=_ints,
        default=None,
        metavar="N,N,..",
        help="closed loop at each concurrency",
    )
    mode.add_argument(
        "--sweep-rates", type=_floats, default=None, metavar="R,R,..", help="open loop at each rate"
    )
    mode.add_argument(
        "--max-outstanding",
        type=int,
        default=1024,
        help="open loop: in-flight requests at most; later ones wait and age (default 1024)",
    )
    mode.add_argument(
        "--channels",
        type=int,
        default=0,
        help=f"gRPC channels (TCP connections); 0: one per {CLIENTS_PER_CHANNEL} clients",
    )
    bound = p.add_argument_group("bounds")
    bound.add_argument(
        "--duration",
        type=float,
        default=None,
        help="measured seconds per run (default 10 unless --max-requests)",
    )
    bound.add_argument("--max-requests", type=int, default=None, help="requests per run at most")
    bound.add_argument(
        "--warmup", type=float, default=0.0, help="unmeasured seconds before each run (default 0)"
    )
    bound.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="caller's deadline per request in seconds, from its scheduled time (default 5)",
    )
    bound.add_argument(
        "--text-timeout",
        type=float,
        default=None,
        help="deadline for explain and stream requests (default: --timeout)",
    )
    bound.add_argument(
        "--wait-ready",
        type=float,
        default=0.0,
        help="first wait up to S seconds for the target's health service to say SERVING "
        "(default: do not wait)",
    )
    work = p.add_argument_group("workload (the rest is plain Recommend, explain=false)")
    work.add_argument("--explain-share", type=float, default=0.0, help="Recommend with explain=true")
    work.add_argument("--stream-share", type=float, default=0.0, help="StreamRecommend")
    work.add_argument("--feedback-share", type=float, default=0.0, help="SendFeedback")
    work.add_argument(
        "--users", type=int, default=1000, help='user ids "load-user-0".."load-user-(N-1)" (default 1000)'
    )
    work.add_argument("--items-file", help="feedback item ids, one per line (default: 1..1682)")
    work.add_argument("--k", type=int, default=10, help="items per Recommend")
    work.add_argument("--seed", type=int, default=0, help="of the request mix and user choice (default 0)")
    out = p.add_argument_group("output")
    out.add_argument("--json", help="write all reports as JSON here")
    out.add_argument("--plot", help="write a PNG of latency versus load here")
    out.add_argument(
        "--tool",
        choices=["own", "ghz"],
        default="own",
        help="ghz: use ghz when on PATH and the load is plain Recommend; otherwise (and by "
        "default) this generator",
    )
    out.add_argument("-v", "--verbose", action="store_true", help="log each run as it ends")
    return p


def points_from_args(args: argparse.Namespace) -> list[tuple[str, float]]:
    points: list[tuple[str, float]] = []
    closed = args.sweep_concurrency or ([args.concurrency] if args.concurrency else [])
    opened = args.sweep_rates or ([args.rate] if args.rate else [])
    points += [("closed", float(c)) for c in closed]
    points += [("open", r) for r in opened]
    return points or [("closed", 8.0)]


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    items: Sequence[str] = DEFAULT_ITEMS
    if args.items_file:
        items = [ln.strip() for ln in Path(args.items_file).read_text().splitlines() if ln.strip()]
    duration = args.duration if args.duration is not None else (None if args.max_requests else 10.0)
    return LoadConfig(
        target=args.target or "",
        name=args.name,
        max_outstanding=args.max_outstanding,
        duration=duration,
        max_requests=args.max_requests,
        warmup=args.warmup,
        timeout=args.timeout,
        text_timeout=args.text_timeout,
        explain_share=args.explain_share,
        stream_share=args.stream_share,
        feedback_share=args.feedback_share,
        users=args.users,
        items=items,
        k=args.k,
        channels=args.channels,
        seed=args.seed,
        tool=args.tool,
    )


async def _main_async(args: argparse.Namespace) -> list[Report]:
    from tools.echo_server import running_echo

    base = config_from_args(args)
    points = points_from_args(args)
    for _, level in points:
        dataclasses.replace(base, concurrency=int(level) if level >= 1 else 1).validate()
    reports: list[Report] = []
    if args.target:
        if args.wait_ready:
            await wait_ready(args.target, args.wait_ready)
        reports += await run_points(dataclasses.replace(base, name=args.name or "recgen"), points)
    if args.echo:
        # Same process, same workload, same run: the only difference is the server.
        with running_echo() as echo_target:
            reports += await run_points(dataclasses.replace(base, target=echo_target, name="echo"), points)
    return reports


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.target and not args.echo:
        build_parser().error("give --target HOST:PORT and/or --echo")
    try:
        reports = asyncio.run(_main_async(args))
    except (ValueError, TimeoutError, RuntimeError) as e:
        print(f"loadtest: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    for r in reports:
        print(r.table(), end="\n\n")
        if r.client_cpu > 0.9:
            print(f"  note: the load generator used {r.client_cpu:.2f} cores; it may be the bottleneck\n")
    if len(reports) > 1:
        print(summary_table(reports))
    if args.json:
        write_json(args.json, reports, {"workload": workload(config_from_args(args))})
    if args.plot:
        plot(reports, args.plot)
    # Exit status 0 even when the server answered errors: they are measured, not a failure of the tool.
    return 0


if __name__ == "__main__":
    sys.exit(main())
