"""Server side of the generation benchmark: a closed loop of StreamRecommend callers, tokens counted
from the streamed text, and the workers' own counters (recgen.worker.v1 Stats).

Starts no server: it measures one already serving at `target`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)


@dataclass
class StreamRecord:
    user_id: str
    t_send: float
    t_items: float | None = None
    t_first_piece: float | None = None
    t_first_generated: float | None = None  # the first piece after the opening
    opening_chars: int = 0  # the first piece: the answer's opening, written by recgen, not the model
    t_end: float | None = None
    pieces: list[tuple[float, int]] = field(default_factory=list)  # (arrival, cumulative chars)
    text: str = ""
    items: list[str] = field(default_factory=list)
    status: str = "OK"
    text_status: str = ""


async def stream_once(stub: Any, rec: StreamRecord, timeout: float) -> StreamRecord:
    """One StreamRecommend for rec.user_id; fills `rec` as events arrive (so a stream cancelled at the end
    of the window keeps what it received).

    The first text piece is the answer's opening, which the worker writes itself before the model's
    first token (the plain prompt's "You will enjoy", the outline's "Because you liked X, try Y, a
    ... film"): model text is everything after it."""
    import grpc

    from recgen.v1 import recommender_pb2 as pb

    req = pb.StreamRecommendRequest(request=pb.RecommendRequest(user_id=rec.user_id, k=10, explain=True))
    rec.t_send = time.perf_counter()
    call = stub.StreamRecommend(req, timeout=timeout)
    try:
        async for ev in call:
            now = time.perf_counter()
            which = ev.WhichOneof("event")
            if which == "items":
                rec.t_items = now
                rec.items = [i.item_id for i in ev.items.items]
            elif which == "text_piece":
                rec.text += ev.text_piece
                rec.pieces.append((now, len(rec.text)))
                if rec.t_first_piece is None:
                    rec.t_first_piece = now
                    rec.opening_chars = len(rec.text)
                elif rec.t_first_generated is None:
                    rec.t_first_generated = now
            elif which == "final":
                rec.text_status = pb.TextStatus.Name(ev.final.text_status)
        rec.t_end = time.perf_counter()
    except asyncio.CancelledError:
        call.cancel()
        rec.status = "CANCELLED_BY_BENCH"
        raise
    except grpc.aio.AioRpcError as e:
        rec.status = e.code().name
        rec.t_end = time.perf_counter()
    return rec


def _generated(rec: StreamRecord, chars: int | None = None) -> str:
    """The model-written part of the first `chars` characters of the stream's text."""
    return rec.text[rec.opening_chars : len(rec.text) if chars is None else chars]


def tokens_between(rec: StreamRecord, tokenizer: Any, t0: float, t1: float) -> int:
    """Model-written tokens of this stream that arrived in [t0, t1): encode the text held at each time."""

    def count_at(t: float) -> int:
        chars = 0
        for at, n in rec.pieces:
            if at >= t:
                break
            chars = n
        gen = _generated(rec, chars)
        return len(tokenizer.encode(gen, add_special_tokens=False).ids) if gen else 0

    return count_at(t1) - count_at(t0)


def _pct(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values) * 1000.0
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p90": round(float(np.percentile(a, 90)), 1),
        "p99": round(float(np.percentile(a, 99)), 1),
        "mean": round(float(a.mean()), 1),
        "n": len(a),
    }


async def server_level(
    target: str,
    user_ids: Sequence[str],
    concurrency: int,
    *,
    duration: float,
    warmup: float,
    tokenizer: Any,
    timeout: float = 120.0,
) -> tuple[dict[str, Any], list[StreamRecord]]:
    """Closed loop: `concurrency` callers, each sending its next StreamRecommend when its previous one
    ended, for warmup + duration seconds; then the streams still open are cancelled. Tokens are counted
    in the measured window only; latencies of requests sent inside it."""
    import grpc

    from recgen.v1 import recommender_pb2_grpc as pbg

    n_ch = max(1, min(4, concurrency // 4))
    chans = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(n_ch)
    ]
    stubs = [pbg.RecommenderStub(c) for c in chans]
    records: list[StreamRecord] = []
    t0 = time.perf_counter()
    m0, m1 = t0 + warmup, t0 + warmup + duration

    async def caller(j: int) -> None:
        k = j
        while time.perf_counter() < m1:
            rec = StreamRecord(user_ids[k % len(user_ids)], time.perf_counter())
            k += concurrency
            records.append(rec)
            task = asyncio.ensure_future(stream_once(stubs[j % len(stubs)], rec, timeout))
            done, _ = await asyncio.wait({task}, timeout=max(0.001, m1 - time.perf_counter()))
            if not done:  # the window is over: stop this stream (its pieces so far are kept)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return

    cpu0 = time.process_time()
    try:
        await asyncio.gather(*(caller(j) for j in range(concurrency)))
    finally:
        await asyncio.gather(*(c.close() for c in chans))
    cpu = time.process_time() - cpu0
    tokens = sum(tokens_between(r, tokenizer, m0, m1) for r in records if r.pieces)
    measured = [r for r in records if r.t_send >= m0 and r.status == "OK" and r.t_end is not None]
    all_in_window = [r for r in records if r.t_send >= m0]
    report = {
        "concurrency": concurrency,
        "duration_s": duration,
        "warmup_s": warmup,
        "tokens": tokens,
        "tokens_per_s": round(tokens / duration, 1),
        "requests_sent_in_window": len(all_in_window),
        "requests_completed_in_window": len(measured),
        "status": dict(Counter(r.status for r in all_in_window)),
        "text_status": dict(Counter(r.text_status for r in measured)),
        "first_items_ms": _pct([r.t_items - r.t_send for r in measured if r.t_items]),
        "first_piece_ms": _pct([r.t_first_piece - r.t_send for r in measured if r.t_first_piece]),
        "first_generated_ms": _pct([r.t_first_generated - r.t_send for r in measured if r.t_first_generated]),
        "latency_ms": _pct([r.t_end - r.t_send for r in measured if r.t_end]),
        "mean_generated_tokens": round(
            float(
                np.mean(
                    [len(tokenizer.encode(_generated(r), add_special_tokens=False).ids) for r in measured]
                )
            ),
            1,
        )
        if measured
        else 0.0,
        "client_cpu": round(cpu / max(time.perf_counter() - t0, 1e-9), 3),
        "host_load": round(os.getloadavg()[0], 2),
    }
    return report, records


async def worker_stats(addresses: Sequence[str]) -> dict[str, dict[str, float]]:
    """The workers' own counters (recgen.worker.v1.Worker/Stats) by address."""
    import grpc

    from recgen.worker.v1 import worker_pb2, worker_pb2_grpc

    out = {}
    for addr in addresses:
        try:
            async with grpc.aio.insecure_channel(addr) as ch:
                r = await worker_pb2_grpc.WorkerStub(ch).Stats(worker_pb2.StatsRequest(), timeout=5)
                out[addr] = dict(r.counters)
        except grpc.aio.AioRpcError as e:
            LOG.warning("worker stats from %s: %s", addr, e.code().name)
    return out


def stats_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, Any]:
    """What the workers did between two Stats snapshots, summed over workers, plus per-worker steps."""
    keys = (
        "llm_tokens_generated",
        "llm_decode_steps",
        "llm_decode_rows",
        "llm_prefill_calls",
        "llm_prefill_rows",
        "llm_prefill_tokens",
        "llm_requests",
    )
    total = dict.fromkeys(keys, 0.0)
    per_worker = {}
    for addr, a in after.items():
        b = before.get(addr, {})
        d = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in keys}
        for k in keys:
            total[k] += d[k]
        per_worker[addr] = {
            "decode_steps": d["llm_decode_steps"],
            "mean_rows_per_step": round(d["llm_decode_rows"] / d["llm_decode_steps"], 2)
            if d["llm_decode_steps"]
            else 0.0,
            "max_rows_per_step": a.get("llm_max_rows_per_step", 0.0),
        }
    return {"total": total, "per_worker": per_worker}
