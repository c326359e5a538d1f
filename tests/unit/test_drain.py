"""The SIGTERM drain (server/drain.py): no call ends CANCELLED when a server behind a balancer stops.

Two real grpc.aio servers (subprocesses: their own event loops, as two gateways) behind the
chaos tool's loopback TCP balancer; 32 callers share one channel, so one HTTP/2 connection
carries them all. The first server is taken out of the balancer and sent SIGTERM, as a rolling
restart does. A plain `server.stop(grace)` here ends ~30 calls CANCELLED per stop (grpc core
cancels the calls it had not yet handed to a handler, and those that arrive before the client
reads the GOAWAY); with the drain every call succeeds. About 4 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from server.drain import drain_fits
from tools.chaos.rolling import Proxy

ROOT = Path(__file__).resolve().parents[2]
METHOD = "/drain.test.Echo/Echo"
AGE_S = 1.0  # the servers' connection age: the drain waits for it (up to 1.1 s + slack)


def test_the_drain_waits_only_when_the_age_fits_in_half_the_grace() -> None:
    assert drain_fits(5.0, 10.0) and drain_fits(2.0, 10.0)
    assert not drain_fits(300.0, 10.0)  # the default age: stop at once, as before
    assert not drain_fits(0.0, 10.0)  # cycling off: nothing moves clients
    assert not drain_fits(5.0, 0.0)


def _serve() -> None:
    """One server: echo after 2 ms; on SIGTERM the drain, then exit. Prints its port."""
    from server.drain import drain, new_server_id, server_ids

    async def main() -> None:
        known = server_ids()
        age = [("grpc.max_connection_age_ms", int(AGE_S * 1000)), ("grpc.max_connection_age_grace_ms", 5000)]
        server = grpc.aio.server(options=age)
        server_id = new_server_id(known)
        assert server_id is not None, "channelz: the new server not found"

        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await asyncio.sleep(0.002)
            return request

        handler = grpc.unary_unary_rpc_method_handler(echo)
        service = grpc.method_handlers_generic_handler("drain.test.Echo", {"Echo": handler})
        server.add_generic_rpc_handlers((service,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await drain(server, server_id, grace_s=5.0, age_s=AGE_S)

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_no_call_is_cancelled_when_a_server_drains_behind_a_balancer() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        for _ in range(2)
    ]
    try:
        ports = [int(p.stdout.readline()) for p in procs if p.stdout is not None]
        codes, exit_code, drained_s = asyncio.run(_load_and_restart(procs[0], ports))
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert exit_code == 0
    assert codes["OK"] > 100
    assert set(codes) == {"OK"}, f"calls failed across the drain: {dict(codes)}"
    assert drained_s < AGE_S * 1.1 + 0.5 + 2.0  # the drain's bound, plus the stop and the exit


async def _load_and_restart(
    victim: subprocess.Popen[str], ports: list[int]
) -> tuple[Counter[str], int, float]:
    proxy = Proxy()
    target = await proxy.start()
    proxy.backends = [("127.0.0.1", p) for p in ports]
    codes: Counter[str] = Counter()
    stop = asyncio.Event()
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_unary(METHOD)

            async def caller() -> None:
                while not stop.is_set():
                    try:
                        await call(b"x", timeout=5)
                        codes["OK"] += 1
                    except grpc.aio.AioRpcError as e:
                        codes[e.code().name] += 1

            callers = [asyncio.create_task(caller()) for _ in range(32)]
            await asyncio.sleep(0.7)  # into the connection's life, not at its GOAWAY
            t0 = time.monotonic()
            proxy.backends.remove(("127.0.0.1", ports[0]))  # out of the balancer first
            victim.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(victim.wait, 30)
            drained_s = time.monotonic() - t0
            await asyncio.sleep(0.3)  # and the other server carries on
            stop.set()
            await asyncio.gather(*callers)
    finally:
        await proxy.close()
    return codes, exit_code, drained_s


if __name__ == "__main__":
    _serve()
