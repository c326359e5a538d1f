"""The baseline: an empty Python grpc.aio server for recgen.v1.Recommender.

It answers every rpc with a fixed, realistically sized answer and does no
work, so what a load run against it measures is the cost of Python gRPC
itself on this machine: the ceiling any Python gRPC service reaches here.
Load it in the same run as the real server and compare.

    python -m tools.echo_server --port 0
    # prints "echo: serving on 127.0.0.1:PORT", runs until SIGTERM/SIGINT (exit 0)

`--delay-ms` and `--concurrency-limit` turn it into a deliberately slow
service (a fixed service time, at most N requests in service, the rest
waiting), used by the load tool's own tests to show queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pb_grpc
from tools.harness.procs import ROOT, stop

LOG = logging.getLogger(__name__)
READY_PREFIX = "echo: serving on "

# MovieLens-like titles so the answer has the size of a real one.
_TITLES = (
    "Toy Story (1995)",
    "Star Wars (1977)",
    "Fargo (1996)",
    "Contact (1997)",
    "Return of the Jedi (1983)",
    "Liar Liar (1997)",
    "English Patient, The (1996)",
    "Scream (1996)",
    "Air Force One (1997)",
    "Independence Day (ID4) (1996)",
)
_TEXT_PIECES = (
    "Since you enjoyed Star Wars (1977), ",
    "Return of the Jedi (1983) continues the story, ",
    "while Fargo (1996) offers something darker ",
    "and Contact (1997) something more thoughtful.",
)


def _answer(explain: bool) -> pb.RecommendResponse:
    items = [pb.Item(item_id=str(50 + 7 * i), title=t, score=4.5 - 0.1 * i) for i, t in enumerate(_TITLES)]
    resp = pb.RecommendResponse(request_id="0" * 32, items=items, model_version="echo-00000000")
    if explain:
        resp.text = "".join(_TEXT_PIECES)
        resp.text_status = pb.TEXT_STATUS_COMPLETE
    return resp


class EchoRecommender(pb_grpc.RecommenderServicer):
    """Fixed answers; optional fixed service time behind an optional concurrency limit."""

    def __init__(self, delay_s: float = 0.0, concurrency_limit: int = 0) -> None:
        # Built once: the point is to measure gRPC, not message construction.
        self._plain = _answer(explain=False)
        self._explained = _answer(explain=True)
        self._items_event = pb.StreamRecommendResponse(items=self._plain)
        self._batch_entry = pb.RecommendBatchResult(response=self._plain)
        self._piece_events = [pb.StreamRecommendResponse(text_piece=p) for p in _TEXT_PIECES]
        self._final_event = pb.StreamRecommendResponse(final=self._explained)
        self._stored = pb.SendFeedbackResponse(stored=True)
        self._delay_s = delay_s
        self._limit = asyncio.Semaphore(concurrency_limit) if concurrency_limit > 0 else None

    async def _service_time(self) -> None:
        if self._delay_s <= 0:
            return
        if self._limit is None:
            await asyncio.sleep(self._delay_s)
            return
        async with self._limit:
            await asyncio.sleep(self._delay_s)

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        await self._service_time()
        return self._explained if request.explain else self._plain

    async def RecommendBatch(
        self, request: pb.RecommendBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendBatchResponse:
        await self._service_time()
        return pb.RecommendBatchResponse(results=[self._batch_entry] * len(request.requests))

    async def StreamRecommend(self, request: pb.StreamRecommendRequest, context: grpc.aio.ServicerContext):
        await self._service_time()
        yield self._items_event
        for ev in self._piece_events:
            yield ev
        yield self._final_event

    async def SendFeedback(
        self, request: pb.SendFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> pb.SendFeedbackResponse:
        await self._service_time()
        return self._stored


async def serve(
    host: str,
    port: int,
    delay_s: float = 0.0,
    concurrency_limit: int = 0,
    max_concurrent_rpcs: int | None = None,
) -> None:
    # so_reuseport off: two servers must never silently share a port in one run.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=max_concurrent_rpcs)
    pb_grpc.add_RecommenderServicer_to_server(EchoRecommender(delay_s, concurrency_limit), server)
    health = health_aio.HealthServicer()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{READY_PREFIX}{host}:{bound}", flush=True)
    await stop.wait()
    await server.stop(grace=1.0)


@contextlib.contextmanager
def running_echo(*extra: str, timeout: float = 30.0) -> Iterator[str]:
    """Start `python -m tools.echo_server --port 0 EXTRA...` as a subprocess; yield HOST:PORT.

    Always stops it (SIGTERM, then SIGKILL) on exit. Used by the load tool's
    `--echo` baseline and by the tests.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.echo_server", "--port", "0", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # The child prints exactly one line once it listens; readline blocks until then or until it dies.
        line = proc.stdout.readline()
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"echo server did not start (exit {proc.wait(timeout)}): {line!r}")
        yield line[len(READY_PREFIX) :].strip()
    finally:
        stop(proc, timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.echo_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed on stdout)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="fixed service time per request")
    p.add_argument(
        "--concurrency-limit",
        type=int,
        default=0,
        help="at most N requests in their service time at once; the rest wait (0: no limit)",
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=None,
        help="gRPC's own limit: excess rpcs are answered RESOURCE_EXHAUSTED",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(
        serve(args.host, args.port, args.delay_ms / 1000.0, args.concurrency_limit, args.max_concurrent_rpcs)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
