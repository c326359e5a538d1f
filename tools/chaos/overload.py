"""Scenario 4, overload: 5x the sustainable rate of an explain-heavy mix with a low
--max-in-flight. Admitted latency, how fast the excess is refused, memory of the process tree,
and a normal request right after the load drops."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import grpc
import numpy as np

from recgen.v1 import recommender_pb2_grpc as pbg
from tools.chaos.client import open_loop, probe
from tools.chaos.plan import Plan
from tools.chaos.report import Row, ms, pct
from tools.chaos.watch import Watch, quiet
from tools.harness.procfs import cpu_s
from tools.harness.procs import Gateway
from tools.loadtest import LoadConfig, run_load

MAX_REFUSAL_P99_MS = 100.0  # RESOURCE_EXHAUSTED answered at once
# After the load drops, a normal request is answered in normal time (2x the idle p99) within this
# long, or at the latest once the requests admitted before the drop are done.
MAX_RECOVERY_S = 2.0
MAX_RSS_GROWTH = 1.5  # peak RSS of the process tree over its idle RSS


async def overload(serve: Gateway, plan: Plan) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(serve.target) as ch:
        stub = pbg.RecommenderStub(ch)
        base = await probe(stub, 30, 0.02)
        base_text = await probe(stub, 3, 0.0, explain=True)
    rss_idle = serve.rss_mib()
    sustain = await run_load(
        LoadConfig(
            target=serve.target,
            name="sustainable",
            concurrency=8,
            duration=plan.sustain_s,
            warmup=2.0,
            timeout=plan.timeout,
            text_timeout=30.0,
            explain_share=plan.explain_heavy,
            users=plan.users,
        )
    )
    sustainable = sustain.throughput
    rss_warm = serve.rss_mib()  # after the sustainable run: caches and arenas at their working size
    rate = plan.overload_factor * sustainable
    workers = serve.worker_pids()
    cpu0 = (cpu_s(serve.pid), sum(cpu_s(w) for w in workers), time.process_time())
    with Watch(serve, every=0.25) as watch:
        t0 = time.perf_counter()
        load = asyncio.create_task(
            open_loop(
                serve.target,
                rate,
                explain_share=plan.explain_heavy,
                timeout=plan.timeout,
                text_timeout=30.0,
                users=plan.users,
                max_s=plan.overload_s,
                seed=7,
            )
        )
        await asyncio.sleep(plan.overload_s)
        cpu1 = (cpu_s(serve.pid), sum(cpu_s(w) for w in workers), time.process_time())
        # The load drops here, with up to --max-in-flight admitted requests still being
        # answered: normal requests from now on, then one with a text once all is quiet.
        async with grpc.aio.insecure_channel(serve.target) as ch:
            after = await probe(pbg.RecommenderStub(ch), 50, 0.1)
            outcomes = await load
            await quiet(serve)
            after_text = await probe(pbg.RecommenderStub(ch), 3, 0.0, explain=True)
    t_end = t0 + plan.overload_s
    drained = next((t for t, _h, _r, f in sorted(watch.samples) if t >= t_end and f == 0), None)
    rss_run = [m for t, m in watch.rss if t0 <= t <= t_end]
    timeline = []
    for w0 in np.arange(t0, t_end, 2.0):
        win = [o for o in outcomes if w0 <= o.t0 < w0 + 2.0]
        timeline.append(
            {
                "t_s": round(float(w0 - t0), 1),
                "sent": len(win),
                "ok": sum(o.code == "OK" for o in win),
                "refused": sum(o.code == "RESOURCE_EXHAUSTED" for o in win),
                "ok_p99_ms": (pct([o.latency for o in win if o.code == "OK"]) or {}).get("p99"),
                "rss_mib": round(max((m for t, m in watch.rss if w0 <= t < w0 + 2.0), default=0.0), 1),
            }
        )
    ok = [o for o in outcomes if o.code == "OK"]
    refused = [o for o in outcomes if o.code == "RESOURCE_EXHAUSTED"]
    half = t0 + plan.overload_s / 2
    base_p99 = (pct([o.latency for o in base]) or {}).get("p99", 0.0)
    normal = 2.0 * base_p99
    back = next((o for o in after if o.code == "OK" and o.latency * 1e3 <= normal), None)
    codes = Counter(o.code for o in outcomes)
    return {
        "max_in_flight": plan.max_in_flight,
        "explain_share": plan.explain_heavy,
        "idle_latency_ms": {
            "recommend": pct([o.latency for o in base]),
            "explain": pct([o.latency for o in base_text]),
        },
        "sustainable": {
            "concurrency": 8,
            "ok_per_s": sustainable,
            "latency_ms": sustain.latency_ms,
            "status_counts": sustain.status_counts,
            "kinds": {
                k: {"ok_per_s": round(v.ok / sustain.elapsed_s, 2), "latency_ms": v.latency_ms}
                for k, v in sustain.kinds.items()
                if v.requests
            },
        },
        # Cores used during the overload window: the load generator shares this machine.
        "cpu_cores": {
            name: round((b - a) / plan.overload_s, 2)
            for name, a, b in zip(("gateway", "workers", "load_generator"), cpu0, cpu1, strict=True)
        },
        "offered_rate": round(rate, 1),
        "requests": len(outcomes),
        "status_counts": dict(codes),
        "admitted_ok_per_s": round(len(ok) / plan.overload_s, 2),
        "admitted_latency_ms": {
            "recommend": pct([o.latency for o in ok if o.kind == "recommend"]),
            "explain": pct([o.latency for o in ok if o.kind == "explain"]),
            "first_half": pct([o.latency for o in ok if o.t0 < half]),
            "second_half": pct([o.latency for o in ok if o.t0 >= half]),
        },
        "refused_latency_ms": pct([o.latency for o in refused]),
        "max_in_flight_seen": max((s[3] for s in watch.samples), default=None),
        "rss_mib": {
            "idle": round(rss_idle, 1),
            "warm": round(rss_warm, 1),
            "max": round(max(rss_run, default=0.0), 1),
            "max_first_half": round(max(rss_run[: len(rss_run) // 2], default=0.0), 1),
            "max_second_half": round(max(rss_run[len(rss_run) // 2 :], default=0.0), 1),
            "after": round(serve.rss_mib(), 1),
        },
        "timeline": timeline,
        "recovery": {
            "normal_ms": round(normal, 1),
            "first_probe": {"code": after[0].code, "latency_ms": round(after[0].latency * 1e3, 1)},
            "first_normal_after_s": None if back is None else round(back.t1 - t_end, 2),
            "probes": pct([o.latency for o in after if o.code == "OK"]),
            "probe_errors": sum(o.code != "OK" for o in after),
            "in_flight_drained_after_s": None if drained is None else round(drained - t_end, 2),
            "explain_after": pct([o.latency for o in after_text if o.code == "OK"]),
        },
    }


def row(o: dict[str, Any]) -> Row:
    adm, rec, rss = o["admitted_latency_ms"], o["recovery"], o["rss_mib"]
    halves = [(adm[k] or {}).get("p99", 0.0) for k in ("first_half", "second_half")]
    refused = o["refused_latency_ms"]
    failed = sum(n for c, n in o["status_counts"].items() if c not in ("OK", "RESOURCE_EXHAUSTED"))
    return Row(
        f"overload {o['offered_rate']:.0f}/s (5x sustainable), max-in-flight {o['max_in_flight']}",
        f"admitted {o['admitted_ok_per_s']}/s, p99 recommend {ms(adm['recommend'])}, explain "
        f"{ms(adm['explain'])} (1st/2nd half {halves[0]:.0f}/{halves[1]:.0f} ms); "
        f"{o['status_counts'].get('RESOURCE_EXHAUSTED', 0)} refused, p99 {ms(refused)}; "
        f"RSS {rss['idle']:.0f} -> max {rss['max']:.0f} MiB; after the drop a normal answer in "
        f"{rec['first_normal_after_s']} s",
        f"{failed} admitted requests failed",
        failed == 0
        and halves[1] <= 2.0 * max(halves[0], 1.0)
        and refused is not None
        and refused["p99"] <= MAX_REFUSAL_P99_MS
        and rec["first_normal_after_s"] is not None
        and rec["first_normal_after_s"]
        <= max(MAX_RECOVERY_S, (rec["in_flight_drained_after_s"] or 0.0) + 0.5)
        and rec["explain_after"] is not None
        and rec["explain_after"]["p99"] <= 3.0 * o["idle_latency_ms"]["explain"]["p99"]
        and rss["max"] <= MAX_RSS_GROWTH * rss["idle"],
    )
