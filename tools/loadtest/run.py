"""Run a bounded load against one target and return its Report: the workload (workload.py) on
the harness's schedule (tools.harness.load), closed or open loop; or ghz when asked and able."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recgen.v1 import recommender_pb2_grpc as pb_grpc
from tools.harness import load
from tools.loadtest.config import LoadConfig, channel_count
from tools.loadtest.ghz import ghz_can_run, run_ghz
from tools.loadtest.report import Recorder, Report
from tools.loadtest.workload import Requester

LOG = logging.getLogger(__name__)


async def run_load(cfg: LoadConfig) -> Report:
    """Run one bounded load (closed or open loop) and return what it measured."""
    cfg.validate()
    if cfg.tool == "ghz":
        if ghz_can_run(cfg):
            return await asyncio.to_thread(run_ghz, cfg)
        cfg = dataclasses.replace(cfg, tool="own")
    chans = await load.connect(cfg.target, channel_count(cfg), min(5.0, cfg.timeout))
    stubs = [pb_grpc.RecommenderStub(c) for c in chans]
    host_load = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    rec = Recorder()
    req = Requester(cfg, rec)
    # A watchdog on top of the per-request deadlines: the run always stops by itself.
    budget = (
        None
        if cfg.duration is None
        else cfg.warmup + cfg.duration + max(cfg.timeout, cfg.text_timeout or 0) + 30.0
    )
    # Measuring begins `warmup` after the load; the run ends `duration` after that or at max_requests.
    seconds = cfg.warmup + cfg.duration if cfg.duration is not None else math.inf
    limit = cfg.max_requests if cfg.max_requests is not None else math.inf

    def begin() -> float:
        t0 = rec.start(cfg.warmup)
        if cfg.rate is not None:
            # The measured window lasts at least as long as the schedule, also when the last answer
            # came before the schedule's end (the rate offered is over the whole window).
            rec.last_done = max(rec.last_done, min(t0 + seconds, t0 + limit / cfg.rate))
        return t0

    try:
        async with asyncio.timeout(budget):
            if cfg.rate is None:
                await load.closed_loop(
                    req.issue, stubs, cfg.concurrency, seconds=seconds, limit=limit, on_start=begin
                )
            else:
                # Due times wait for one of max_outstanding senders, and age: that wait is measured.
                await load.open_loop(
                    req.issue,
                    stubs,
                    cfg.rate,
                    seconds=seconds,
                    limit=limit,
                    max_outstanding=cfg.max_outstanding,
                    on_start=begin,
                )
    except TimeoutError:
        LOG.error("%s: run did not finish within its %.0f s budget; stopped", cfg.target, budget)
    finally:
        await asyncio.gather(*(c.close() for c in chans))
    return rec.report(cfg, time.process_time() - cpu0, time.perf_counter() - t0, host_load)


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
