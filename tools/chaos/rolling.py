"""Scenario 6, rolling restart: two gateways on one SQLite state file behind one port, restarted
one at a time under Recommend and SendFeedback load. No request may fail and no acknowledged event
may be lost or stored twice.

"One port" is a small TCP balancer here (Proxy: round robin over the live gateways, per
connection), standing in for what a Kubernetes Service or any L4 load balancer does; the gateway
itself keeps SO_REUSEPORT off, so two of them cannot share a port on one host. A restart is what
an orchestrator does: take the gateway out of the balancer, SIGTERM it (it drains: health
NOT_SERVING, in-flight calls finish, open HTTP/2 connections get GOAWAY and the clients reconnect
through the balancer to the other one), start its replacement, put that in.

Both gateways run `--user-cache 0`: the per-user cache is right only for a store's one writer
(server/user_state_cache.py), and here two gateways write the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.chaos.client import open_loop
from tools.chaos.plan import Plan, gateway
from tools.chaos.report import Row, ms, pct
from tools.harness.procs import Gateway

LOG = logging.getLogger(__name__)
# --max-connection-age-s 5 (half the default --grace 10): the drain can then move every client off
# before the server stops, so no call ends CANCELLED (server/drain.py).
GATEWAY_ARGS = ("--workers", "1", "--user-cache", "0", "--max-connection-age-s", "5")


class Proxy:
    """A loopback TCP balancer: each new connection goes to the next gateway in `backends`;
    open connections stay where they are until either end closes them."""

    def __init__(self) -> None:
        self.backends: list[tuple[str, int]] = []
        self._next = itertools.count()
        self._server: asyncio.Server | None = None
        self.connections: Counter[str] = Counter()  # backend "host:port" -> connections sent there

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.backends:
            writer.close()
            return
        host, port = self.backends[next(self._next) % len(self.backends)]
        self.connections[f"{host}:{port}"] += 1
        try:
            up_r, up_w = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()  # the client sees UNAVAILABLE and reconnects: counted as its error
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            with contextlib.suppress(Exception):
                w.close()

        with contextlib.suppress(asyncio.CancelledError):  # the balancer closing at the end
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


def backend(gw: Gateway) -> tuple[str, int]:
    host, port = gw.target.rsplit(":", 1)
    return host, int(port)


async def feedback_load(
    target: str, clients: int, stop: asyncio.Event, errors: list[tuple[float, str]]
) -> tuple[set[str], Counter[str]]:
    """SendFeedback until `stop`; an event that failed is sent again with the same event_id (each
    failure also goes to `errors` as (perf_counter, code), to place it against the restarts)."""
    acked: set[str] = set()
    codes: Counter[str] = Counter()
    ids = itertools.count()
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pbg.RecommenderStub(ch)

        async def client(c: int) -> None:
            while not stop.is_set():
                n = next(ids)
                req = pb.SendFeedbackRequest(
                    event_id=f"roll-{n}",
                    user_id=f"roll-user-{n % 97}",
                    item_id=str(1 + n % 1682),
                    type=pb.FEEDBACK_TYPE_CLICK,
                )
                for _ in range(3):
                    try:
                        await stub.SendFeedback(req, timeout=5.0)
                    except grpc.aio.AioRpcError as e:
                        codes[e.code().name] += 1
                        errors.append((time.perf_counter(), e.code().name))
                        continue
                    codes["OK"] += 1
                    acked.add(req.event_id)
                    break
                await asyncio.sleep(0.02)

        await asyncio.gather(*(client(c) for c in range(clients)))
    return acked, codes


async def rolling_restart(models: Path, plan: Plan) -> dict[str, Any]:
    state = "rolling.db"
    starts = [gateway(plan, models, state, f"rolling-{n}", *GATEWAY_ARGS) for n in "ab"]
    live: list[Gateway] = []
    proxy = Proxy()
    restarts: list[dict[str, Any]] = []
    try:
        # One after the other: the first writes the schema, the second finds it.
        for g in starts:
            live.append(await asyncio.to_thread(g.start))
        target = await proxy.start()
        proxy.backends = [backend(g) for g in live]
        stop = asyncio.Event()
        rec = asyncio.create_task(
            open_loop(
                target,
                plan.rate,
                explain_share=0.0,
                timeout=plan.timeout,
                text_timeout=plan.text_timeout,
                users=plan.users,
                max_s=plan.warm_s + 4 * plan.recovery_limit_s + plan.tail_s,
                stop=stop,
                seed=6,
            )
        )
        fb_errors: list[tuple[float, str]] = []
        fb = asyncio.create_task(feedback_load(target, 8, stop, fb_errors))
        t_load = time.perf_counter()
        await asyncio.sleep(plan.warm_s)
        for i, old in enumerate(list(live)):
            t0 = time.perf_counter()
            proxy.backends.remove(backend(old))  # out of the balancer first, as a readiness probe would
            code = await asyncio.to_thread(old.stop, signal.SIGTERM)
            t_stopped = time.perf_counter()
            new = gateway(plan, models, state, f"rolling-{'ab'[i]}{i + 2}", *GATEWAY_ARGS)
            live[i] = await asyncio.to_thread(new.start)
            proxy.backends.append(backend(live[i]))
            restarts.append(
                {
                    "exit_code": code,
                    "out_of_balancer_at_s": round(t0 - t_load, 2),
                    "drained_s": round(t_stopped - t0, 2),
                    "replacement_ready_s": round(time.perf_counter() - t_stopped, 2),
                }
            )
        await asyncio.sleep(plan.tail_s)
        stop.set()
        outcomes = await rec
        acked, fb_codes = await fb
    finally:
        await proxy.close()
        for g in live:
            g.stop()
    with contextlib.closing(sqlite3.connect(plan.dir / state)) as db:
        rows = [r[0] for r in db.execute("SELECT event_id FROM events WHERE event_id LIKE 'roll-%'")]
    stored = Counter(rows)
    codes = Counter(o.code for o in outcomes)
    failures = [(o.t1, f"Recommend {o.code}") for o in outcomes if o.code != "OK"]
    failures += [(t, f"SendFeedback {c}") for t, c in fb_errors]
    return {
        "gateways": 2,
        "restarts": restarts,
        "balancer_connections": dict(proxy.connections),
        "recommend": {
            "requests": len(outcomes),
            "status_counts": dict(codes),
            "failed": sum(n for c, n in codes.items() if c != "OK"),
            "latency_ms": pct([o.latency for o in outcomes if o.code == "OK"]),
        },
        "feedback": {
            "acknowledged": len(acked),
            "status_counts": dict(fb_codes),
            "failed": sum(n for c, n in fb_codes.items() if c != "OK"),
        },
        "failures_at_s": [[round(t - t_load, 2), what] for t, what in sorted(failures)],
        "lost": len(acked - set(stored)),
        "duplicated": sum(n - 1 for n in stored.values()),
    }


def row(r: dict[str, Any]) -> Row:
    rec, fb = r["recommend"], r["feedback"]
    drains = ", ".join(f"{x['drained_s']} s" for x in r["restarts"])
    return Row(
        "rolling restart, 2 gateways",
        f"{len(r['restarts'])} gateways restarted one at a time (drained in {drains}) under "
        f"{rec['requests']} Recommend (p99 {ms(rec['latency_ms'])}) and {fb['acknowledged']} "
        f"acknowledged SendFeedback",
        f"{rec['failed']} Recommend and {fb['failed']} SendFeedback failed; acknowledged events "
        f"lost {r['lost']}, duplicated {r['duplicated']}",
        rec["failed"] == 0
        and fb["failed"] == 0
        and r["lost"] == 0
        and r["duplicated"] == 0
        and all(x["exit_code"] == 0 for x in r["restarts"]),
    )
