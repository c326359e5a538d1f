"""Chaos, the short version for `make test`: a hung worker is replaced under load.

SIGSTOP leaves a worker's socket open and its process alive, so nothing fails
fast: only health checks that time out can find it. The gateway must take it
out of rotation, kill and restart it, and the requests that were in flight on
it must be retried elsewhere, while clients keep getting answers. The full
set of scenarios (SIGKILL, durability, overload, deadlines) is `make chaos`
(tools/chaos/); this is the one that guards the supervision logic.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procfs import alive, children
from tools.harness.procs import Gateway, scrape

pytestmark = pytest.mark.e2e

CLIENTS = 3
REQUEST_TIMEOUT = 20.0  # far above detection + restart: in-flight requests must be retried, not expire


def test_hung_worker_is_taken_out_and_restarted_while_requests_succeed(
    model_root: Path, tmp_path: Path
) -> None:
    gateway = Gateway(model_root, tmp_path / "s.db", "--workers", "2", "--max-new-tokens", "16", metrics=True)
    with gateway as gw:
        target, url = gw.target, gw.url
        workers = set(children(gw.pid))
        assert len(workers) == 2
        victim = min(workers)
        outcomes: list[tuple[float, str]] = []  # (end time, status code name)
        done = threading.Event()

        def client(n: int) -> None:
            with grpc.insecure_channel(target) as ch:
                s = pbg.RecommenderStub(ch)
                i = 0
                while not done.is_set() and i < 2000:  # bounded: ~100 s of requests at most
                    i += 1
                    try:
                        s.Recommend(
                            pb.RecommendRequest(user_id=f"hang-{n}-{i % 13}", k=5), timeout=REQUEST_TIMEOUT
                        )
                        code = "OK"
                    except grpc.RpcError as e:
                        code = e.code().name
                    outcomes.append((time.monotonic(), code))
                    time.sleep(0.02)

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        t_out = t_back = None
        try:
            time.sleep(1.0)
            os.kill(victim, signal.SIGSTOP)
            t_stop = time.monotonic()
            deadline = t_stop + 45.0
            while time.monotonic() < deadline:
                m = scrape(url, timeout=10)
                if t_out is None and m["recgen_workers_healthy"] < 2:
                    t_out = time.monotonic()
                if m["recgen_worker_restarts_total"] >= 1 and m["recgen_workers_healthy"] == 2:
                    t_back = time.monotonic()
                    break
                time.sleep(0.1)
            time.sleep(1.0)  # a little traffic on the restarted pool
        finally:
            done.set()
            for t in threads:
                t.join(REQUEST_TIMEOUT + 5)
            if alive(victim):  # not restarted: let it run so that SIGTERM of the gateway ends it
                os.kill(victim, signal.SIGCONT)

        assert t_out is not None, "the hung worker was never taken out of rotation"
        assert t_back is not None, "the hung worker was not restarted within 45 s"
        assert not alive(victim), "the hung process must be killed, not left stopped"
        now = set(children(gw.pid))
        assert len(now) == 2 and victim not in now
        codes = [c for _, c in outcomes]
        failed = [c for c in codes if c != "OK"]
        assert not failed, f"{len(failed)} of {len(codes)} requests failed: {sorted(set(failed))}"
        during = [c for t, c in outcomes if t_stop < t < t_back]
        assert during, "no request was answered while the worker was hung"
        # Detection is by health checks (1 s timeout, out after 2 misses): seconds, not the deadline.
        assert t_out - t_stop < 10.0


def test_the_rolling_restart_balancer_sends_new_connections_only_to_live_gateways() -> None:
    """tools/chaos/rolling.py's Proxy, in front of two real echo servers: a gRPC channel opened
    after a backend is taken out reaches the other one, and calls through it succeed."""
    import asyncio

    from tools.chaos.rolling import Proxy
    from tools.echo_server import running_echo

    def split(target: str) -> tuple[str, int]:
        host, port = target.rsplit(":", 1)
        return host, int(port)

    async def calls(target: str, n: int) -> list[str]:
        codes = []
        async with grpc.aio.insecure_channel(target) as ch:
            stub = pbg.RecommenderStub(ch)
            for i in range(n):
                try:
                    await stub.Recommend(pb.RecommendRequest(user_id=f"u{i}", k=3), timeout=5)
                    codes.append("OK")
                except grpc.aio.AioRpcError as e:
                    codes.append(e.code().name)
        return codes

    async def scenario(a: str, b: str) -> tuple[list[str], dict[str, int], dict[str, int]]:
        proxy = Proxy()
        target = await proxy.start()
        proxy.backends = [split(a), split(b)]
        try:
            codes = await calls(target, 3) + await calls(target, 3)  # two channels: one per backend
            spread = dict(proxy.connections)
            proxy.backends.remove(split(a))
            codes += await calls(target, 3) + await calls(target, 3)
            return codes, spread, dict(proxy.connections)
        finally:
            await proxy.close()

    with running_echo() as a, running_echo() as b:
        codes, spread, after = asyncio.run(scenario(a, b))
    assert codes == ["OK"] * 12
    assert spread == {a: 1, b: 1}
    assert after == {a: 1, b: 3}  # both later connections went to the one left
