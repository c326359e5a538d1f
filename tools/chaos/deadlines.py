"""Scenario 3, deadlines: requests whose deadline passes while they wait in a worker's queue are
dropped before any work (worker counters via /metrics): a burst of Rank calls straight to one
worker, and explain requests with a short deadline while the language model is busy."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import grpc

from recgen.v1 import recommender_pb2_grpc as pbg
from tools.chaos.client import Outcome, one_request
from tools.chaos.plan import Plan
from tools.chaos.report import Row
from tools.chaos.watch import deltas, quiet
from tools.harness import load
from tools.harness.procs import Gateway


async def rank_burst(serve: Gateway, plan: Plan) -> dict[str, Any]:
    """Rank jobs whose deadline passes while queued in a worker are dropped before their batch.

    Through the gateway the worker's rank queue hardly forms: one Python event loop
    admits requests more slowly than a worker ranks them, and a request that expires
    there is dropped before it reaches a worker at all. So the burst goes straight to
    one worker's socket, as a gateway would send it, with users of 10-item histories;
    up to 3 bursts, until the batcher's queue has held some past their deadline.
    Requests that expire even earlier, waiting in gRPC for the handler, never count as
    rank_requests: sent - rank_requests of them.
    """
    from recgen.worker.v1 import worker_pb2 as wpb
    from recgen.worker.v1 import worker_pb2_grpc as wpbg

    rng = random.Random(5)
    m0 = await quiet(serve)
    codes: Counter[str] = Counter()
    rounds = 0
    async with grpc.aio.insecure_channel(serve.worker_addresses()[0][1]) as ch:
        stub = wpbg.WorkerStub(ch)
        s0 = await stub.Stats(wpb.StatsRequest(), timeout=5)

        async def one() -> None:
            history = [wpb.Interaction(item_id=str(rng.randint(1, 1682)), weight=1.0) for _ in range(10)]
            try:
                await stub.Rank(wpb.RankRequest(history=history, k=10), timeout=plan.burst_deadline_s)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as e:
                codes[e.code().name] += 1

        while rounds < 3:
            rounds += 1
            await asyncio.gather(*(one() for _ in range(plan.burst)))
            await asyncio.sleep(0.5)
            s1 = await stub.Stats(wpb.StatsRequest(), timeout=5)
            if sum(s1.counters[k] - s0.counters[k] for k in ("rank_expired", "rank_cancelled")) > 0:
                break
    m1 = await quiet(serve)
    d = deltas(m0, m1, ["rank_requests", "rank_expired", "rank_cancelled", "rank_rejected"])
    batch_sum = "recgen_worker_rank_batch_size_sum"
    batched = m1.get(batch_sum, 0.0) - m0.get(batch_sum, 0.0)
    dropped = d["rank_expired"] + d["rank_cancelled"]
    return {
        "requests": plan.burst * rounds,
        "bursts": rounds,
        "deadline_ms": plan.burst_deadline_s * 1e3,
        "status_counts": dict(codes),
        "dropped_before_handler": plan.burst * rounds - d["rank_requests"],
        "ranked_too_late": batched - codes["OK"],
        "worker_counters_delta": d,
        "batched": batched,
        "dropped_in_queue": dropped,
        # Every Rank the worker accepted either ran in a batch or was dropped before one.
        "accounted": abs(d["rank_requests"] - (batched + dropped + d["rank_rejected"])) < 0.5,
        "restarts_during": m1["recgen_worker_restarts_total"] - m0["recgen_worker_restarts_total"],
    }


async def text_deadlines(serve: Gateway, plan: Plan) -> dict[str, Any]:
    """Explain requests with a short deadline while the language model is busy: the text
    is cut (the items still come back) and generations whose deadline passes while they
    wait for a decode slot are dropped before their prefill."""
    chans = load.channels(serve.target, 4)
    stubs = [pbg.RecommenderStub(c) for c in chans]
    stop = asyncio.Event()
    background_sent = 0

    async def background(i: int) -> None:  # keeps the language model and the cores busy
        nonlocal background_sent
        while not stop.is_set() and background_sent < 500:
            background_sent += 1
            await one_request(stubs[i % 4], "explain", f"chaos-user-{i}", None, 30.0)

    m0 = await quiet(serve)
    bg = [asyncio.create_task(background(i)) for i in range(8)]
    short: list[Outcome] = []
    try:
        await asyncio.sleep(1.5)
        for i in range(plan.short_text_requests):
            stub = stubs[i % 4]
            short.append(
                await one_request(stub, "explain", f"chaos-user-{i}", None, plan.short_text_deadline_s)
            )
    finally:
        stop.set()
        await asyncio.gather(*bg)
        await asyncio.gather(*(c.close() for c in chans))
    m1 = await quiet(serve)
    d = deltas(
        m0,
        m1,
        ["llm_requests", "llm_prefill_rows", "llm_finished_deadline", "llm_finished_cancelled"],
    )
    return {
        "requests": plan.short_text_requests,
        "deadline_ms": plan.short_text_deadline_s * 1e3,
        "background_explain_requests": background_sent,
        "status_counts": dict(Counter(o.code for o in short)),
        "text_status_counts": dict(Counter(o.text_status for o in short if o.code == "OK")),
        "worker_counters_delta": d,
        # Submitted to a generator but never prefilled: dropped while waiting.
        "never_prefilled": d["llm_requests"] - d["llm_prefill_rows"],
        "restarts_during": m1["recgen_worker_restarts_total"] - m0["recgen_worker_restarts_total"],
    }


async def deadlines(serve: Gateway, plan: Plan) -> dict[str, Any]:
    return {"rank": await rank_burst(serve, plan), "text": await text_deadlines(serve, plan)}


def row(d: dict[str, Any]) -> Row:
    rk, tx = d["rank"], d["text"]
    rc, tc = rk["worker_counters_delta"], tx["worker_counters_delta"]
    cut = tx["text_status_counts"].get("TEXT_STATUS_CUT_SHORT", 0)
    return Row(
        "deadline passes in queue",
        f"{rk['requests']} Rank at {rk['deadline_ms']:.0f} ms: {rk['batched']:.0f} ranked, "
        f"{rk['dropped_in_queue']:.0f} dropped in the batcher queue (rank_expired "
        f"{rc['rank_expired']:.0f}, rank_cancelled {rc['rank_cancelled']:.0f}), "
        f"{rk['dropped_before_handler']:.0f} by gRPC before the handler, "
        f"{rc['rank_rejected']:.0f} refused (queue full); {tx['requests']} "
        f"explain at {tx['deadline_ms']:.0f} ms under load: {cut} got items with the text cut, "
        f"{tx['never_prefilled']:.0f} of {tc['llm_requests']:.0f} generations dropped before "
        f"prefill (finished deadline {tc['llm_finished_deadline']:.0f}, cancelled "
        f"{tc['llm_finished_cancelled']:.0f})",
        "no work for the dropped" + ("" if rk["accounted"] else "; RANK COUNTERS DO NOT ADD UP"),
        rk["dropped_in_queue"] > 0
        and rk["accounted"]
        and tx["never_prefilled"] > 0
        and rk["restarts_during"] == 0
        and tx["restarts_during"] == 0,
    )
