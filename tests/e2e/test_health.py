"""Health that tells the truth, and reflection as v1: real `recgen serve`, real workers, real stores.

Every worker stopped (SIGSTOP): health turns NOT_SERVING for "" and recgen.v1.Recommender
(Check, Watch and List agree) while Recommend fails with UNAVAILABLE; continued (SIGCONT), or
restarted by the gateway, SERVING again by itself. The state store's PostgreSQL stopped: NOT_SERVING;
started: SERVING. Server reflection answers on grpc.reflection.v1 as on v1alpha. The measured
flip times are printed (pytest -s) and bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from recgen.promotion import POINTER_HEALTH_SERVICE
from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tests.pg import PostgresServer
from tools.harness.procs import Gateway

pytestmark = pytest.mark.e2e

SERVICES = ("", "recgen.v1.Recommender")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DOWN_WITHIN_S = 8.0  # workers leave rotation after ~2.5 s of failed checks; health is judged every 0.5 s
UP_WITHIN_S = 90.0  # SIGCONT: the next check, ~1 s; a worker the gateway restarted meanwhile loads its model


def statuses(ch: grpc.Channel) -> tuple[dict[str, int], dict[str, int]]:
    """Every service's status by Check, and by List."""
    stub = health_pb2_grpc.HealthStub(ch)
    checked = {s: stub.Check(health_pb2.HealthCheckRequest(service=s), timeout=2).status for s in SERVICES}
    listed = stub.List(health_pb2.HealthListRequest(), timeout=2).statuses
    # POINTER_HEALTH_SERVICE follows the model version, not the gateway's ability to answer.
    return checked, {s: r.status for s, r in listed.items() if s != POINTER_HEALTH_SERVICE}


def wait_for(ch: grpc.Channel, status: int, within: float) -> float:
    """Seconds until every service reports `status` by Check and by List; fails after `within`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        checked, listed = statuses(ch)
        if checked == listed == dict.fromkeys(SERVICES, status):
            return time.monotonic() - t0
        time.sleep(0.05)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    raise AssertionError(f"not {name} after {within} s: {statuses(ch)}")


@contextlib.contextmanager
def watching(ch: grpc.Channel) -> Iterator[list[int]]:
    """The statuses a Watch of recgen.v1.Recommender streams, collected while the block runs."""
    seen: list[int] = []
    call = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=SERVICES[1]))

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):
            for r in call:
                seen.append(r.status)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield seen
    finally:
        time.sleep(0.3)  # the last change reaches the stream
        call.cancel()
        reader.join(5)


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # a stopped worker the gateway restarted is gone
            os.kill(pid, sig)


@pytest.fixture(scope="module")
def gateway(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    state = tmp_path_factory.mktemp("health") / "s.db"
    with Gateway(model_root, state, "--workers", "2", "--max-new-tokens", "8") as gw:
        yield gw


def _reflection(
    ch: grpc.Channel, version: str
) -> Callable[..., Iterator[reflection_pb2.ServerReflectionResponse]]:
    # v1 and v1alpha are the same messages, byte for byte: only the method path differs.
    return ch.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )


def test_reflection_v1_and_v1alpha(gateway: Gateway) -> None:
    with grpc.insecure_channel(gateway.target) as ch:
        for version in ("v1", "v1alpha"):
            listed, described, v1_file = _reflection(ch, version)(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(list_services=""),
                        reflection_pb2.ServerReflectionRequest(
                            file_containing_symbol="recgen.v1.Recommender"
                        ),
                        reflection_pb2.ServerReflectionRequest(
                            file_containing_symbol="grpc.reflection.v1.ServerReflection"
                        ),
                    ]
                ),
                timeout=10,
            )
            names = {s.name for s in listed.list_services_response.service}
            assert names == {
                "recgen.v1.Recommender",
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            }, version
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(b)
                for b in described.file_descriptor_response.file_descriptor_proto
            ]
            recommender = next(f for f in files if f.package == "recgen.v1")
            assert "Recommend" in {m.name for s in recommender.service for m in s.method}
            (v1,) = (
                descriptor_pb2.FileDescriptorProto.FromString(b)
                for b in v1_file.file_descriptor_response.file_descriptor_proto
            )
            assert v1.name == "grpc/reflection/v1/reflection.proto" and v1.package == "grpc.reflection.v1"
            (method,) = v1.service[0].method
            assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"


def test_serving_pointer_is_reported(gateway: Gateway) -> None:
    """The workers serve the version the pointer names (tests/e2e/test_faults.py: one that does not)."""
    with grpc.insecure_channel(gateway.target) as ch:
        req = health_pb2.HealthCheckRequest(service=POINTER_HEALTH_SERVICE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):  # NOT_FOUND until the first probe
                if health_pb2_grpc.HealthStub(ch).Check(req, timeout=2).status == SERVING:
                    return
            time.sleep(0.2)
    raise AssertionError(f"{POINTER_HEALTH_SERVICE} not SERVING")


def test_health_follows_the_workers(gateway: Gateway) -> None:
    gw = gateway
    with grpc.insecure_channel(gw.target) as ch:
        assert wait_for(ch, SERVING, 1.0) < 0.5  # at once
        workers = gw.worker_pids()
        assert len(workers) == 2
        stub = pbg.RecommenderStub(ch)
        with watching(ch) as seen:
            signal_all(workers, signal.SIGSTOP)
            try:
                down_s = wait_for(ch, NOT_SERVING, DOWN_WITHIN_S)
                with pytest.raises(grpc.RpcError) as e:  # what health now says: it cannot answer
                    stub.Recommend(pb.RecommendRequest(user_id="probe", k=3), timeout=10)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
            finally:
                signal_all(workers, signal.SIGCONT)
            up_s = wait_for(ch, SERVING, UP_WITHIN_S)
        assert [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]] == [
            SERVING,
            NOT_SERVING,
            SERVING,
        ]
        assert len(stub.Recommend(pb.RecommendRequest(user_id="probe", k=3), timeout=30).items) == 3
        restarted = not set(workers) & set(gw.worker_pids())
        print(
            f"\nworkers SIGSTOPped: NOT_SERVING after {down_s:.2f} s; SIGCONT: SERVING after {up_s:.2f} s"
            f" ({'restarted by the gateway' if restarted else 'the same workers'})"
        )


def test_health_follows_the_state_store(model_root: Path, postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.new_database()
    with (
        Gateway(model_root, url, "--workers", "1", "--max-new-tokens", "8", log_dir=tmp_path) as gw,
        grpc.insecure_channel(gw.target) as ch,
    ):
        assert wait_for(ch, SERVING, 1.0) < 0.5  # at once
        postgres.stop()
        try:
            down_s = wait_for(ch, NOT_SERVING, DOWN_WITHIN_S)
        finally:
            postgres.start()
        up_s = wait_for(ch, SERVING, 10.0)
        log = (tmp_path / "serve.log").read_text()
        assert "health: NOT_SERVING: state store" in log, log[-2000:]
        print(f"\nPostgreSQL stopped: NOT_SERVING after {down_s:.2f} s; started: SERVING after {up_s:.2f} s")
