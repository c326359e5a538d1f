"""What the gateway's per-call interceptor costs: CPU-µs per unary call, against none, in one run.

    python -m tools.bench.interceptor_cost [--calls 3000] [--rounds 3]

One process, one event loop: a grpc.aio server on a loopback port whose Recommend answers at
once, and a client calling it sequentially. Configurations, each timed `rounds` times
interleaved (the best round kept: machines are noisy; CPU time of the process, all threads):
no interceptor; server/errors.py's ErrorStatus with the access log off, and with the opt-in
x-request-id response header; with the log on (the CLI's plain formatter, written to
/dev/null); and with tracing on as well (the SDK, spans exported to
memory). Prints CPU-µs per call and the difference to the bare server; the client's own cost is
in every row alike. Then the access line alone: CPU-µs per `AccessLog.record`, plain and JSON.

What it does not do: measure a real Recommend (tools/bench/rank_cost.py does) or concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

import grpc

from recgen import tracing
from recgen.logs import JsonFormatter, PlainFormatter, RedactingFilter, RequestIdFilter
from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from server.access_log import AccessLog
from server.errors import ErrorStatus


class Echo(pbg.RecommenderServicer):
    async def Recommend(self, request: pb.RecommendRequest, context: Any) -> pb.RecommendResponse:
        return pb.RecommendResponse(request_id="r")


async def _time(interceptors: list, calls: int) -> float:
    server = grpc.aio.server(interceptors=interceptors)
    pbg.add_RecommenderServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pbg.RecommenderStub(ch)
            req = pb.RecommendRequest(user_id="bench-user", k=10)
            for _ in range(200):  # warm up the channel
                await stub.Recommend(req)
            t0 = time.process_time()  # CPU, not wall: the machine's other load does not count
            for _ in range(calls):
                await stub.Recommend(req)
            return (time.process_time() - t0) / calls * 1e6
    finally:
        await server.stop(None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    handler = logging.FileHandler("/dev/null")
    handler.setFormatter(PlainFormatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    configs = {
        "no interceptor": (lambda: [], False),
        "ErrorStatus, access log off": (
            lambda: [ErrorStatus(None, access_log=AccessLog(enabled=False))],
            False,
        ),
        "ErrorStatus + x-request-id header, log off": (
            lambda: [ErrorStatus(None, access_log=AccessLog(enabled=False), request_id_header=True)],
            False,
        ),
        "ErrorStatus, access log on": (lambda: [ErrorStatus(None, access_log=AccessLog())], False),
        "ErrorStatus, access log + tracing": (lambda: [ErrorStatus(None, access_log=AccessLog())], True),
    }
    best = {name: float("inf") for name in configs}
    for _ in range(args.rounds):
        for name, (make, traced) in configs.items():
            exporter = InMemorySpanExporter()
            if traced:
                tracing.setup("bench", None, exporter=exporter)
            try:
                best[name] = min(best[name], asyncio.run(_time(make(), args.calls)))
            finally:
                tracing.shutdown()
    base = best["no interceptor"]
    print(f"{'configuration':40s} {'CPU-µs/call':>11s} {'+µs':>7s} {'ratio':>6s}")
    for name, us in best.items():
        print(f"{name:40s} {us:11.1f} {us - base:7.1f} {us / base:6.2f}")
    for formatter in (PlainFormatter(), JsonFormatter()):
        handler.setFormatter(formatter)
        log, req, n = AccessLog(), pb.RecommendRequest(user_id="bench-user", k=10), 20_000
        t0 = time.process_time()
        for _ in range(n):
            log.record("Recommend", grpc.StatusCode.OK, 0.001, req)
        us = (time.process_time() - t0) / n * 1e6
        print(f"{'one access line, ' + type(formatter).__name__:40s} {us:11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
