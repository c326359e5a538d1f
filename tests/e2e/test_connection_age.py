"""Max connection age on the public port: a long-lived channel is cycled, no call fails.

A real `recgen serve` with `--max-connection-age-s 1`; one client channel
calls Recommend for a few seconds. The server must send GOAWAY about once a
second (the client sees its connection leave READY and come back, and the
kernel shows a new client port each time) while every call succeeds.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.harness.procs import Gateway

pytestmark = pytest.mark.e2e

TCP_ESTABLISHED = "01"


def client_ports_to(port: int) -> set[int]:
    """Local ports of established TCP connections whose remote port is `port` (this netns).

    Both tables: gRPC opens dual-stack sockets, so a connection to 127.0.0.1
    is usually listed in tcp6 with a v4-mapped address.
    """
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if state == TCP_ESTABLISHED and int(remote.rsplit(":", 1)[1], 16) == port:
                    found.add(int(local.rsplit(":", 1)[1], 16))
    return found


@pytest.fixture(scope="module")
def aging_gateway(model_root: Path, tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("conn_age") / "state.db"
    gw = Gateway(
        model_root,
        state,
        "--workers",
        "1",
        "--max-connection-age-s",
        "1",
        "--max-connection-age-grace-s",
        "1",
    ).start()
    try:
        yield gw
    finally:
        gw.stop(signal.SIGKILL)


def test_long_lived_channel_is_cycled_without_failed_calls(aging_gateway: Gateway) -> None:
    states: list[grpc.ChannelConnectivity] = []
    lock = threading.Lock()

    def on_state(s: grpc.ChannelConnectivity) -> None:
        with lock:
            states.append(s)

    ports: set[int] = set()
    calls = failures = 0
    with grpc.insecure_channel(aging_gateway.target) as channel:
        channel.subscribe(on_state, try_to_connect=True)
        stub = pbg.RecommenderStub(channel)
        deadline = time.monotonic() + 4.5
        while time.monotonic() < deadline:
            try:
                r = stub.Recommend(pb.RecommendRequest(user_id="aging", k=5), timeout=10)
                assert len(r.items) == 5
            except grpc.RpcError as e:  # counted, not raised: the claim is "none fails"
                failures += 1
                print("failed call:", e.code(), e.details())
            calls += 1
            ports |= client_ports_to(aging_gateway.port)
            time.sleep(0.05)
        channel.unsubscribe(on_state)

    with lock:
        ready_entries = sum(
            1
            for prev, cur in zip([None, *states], states, strict=False)
            if cur == grpc.ChannelConnectivity.READY and prev != grpc.ChannelConnectivity.READY
        )
    print(f"{calls} calls, {failures} failed, {ready_entries} READY entries, {len(ports)} client ports")
    assert failures == 0, f"{failures} of {calls} calls failed across connection cycling"
    assert calls >= 10
    # 4.5 s at a 1 s age (+-10% jitter) and 1 s grace: at least 3 connections,
    # where without the option the channel would keep the first one throughout.
    assert ready_entries >= 3, f"channel states {states}"
    assert len(ports) >= 3, f"client ports seen {sorted(ports)}"
