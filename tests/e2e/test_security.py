"""TLS, mutual TLS, tokens with rights, per-user feedback limits, ForgetUser."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tests.pki import issue, make_ca
from tools.harness.procs import recgen, stop

pytestmark = pytest.mark.e2e

SERVE_TOKEN = "serve-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for localhost, a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    make_ca(d)
    issue(d, "server", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    issue(d, "client", "extendedKeyUsage=clientAuth")
    return d


def start(model_root: Path, tmp: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = recgen(
        "serve",
        "--models",
        str(model_root),
        "--port",
        "0",
        "--workers",
        "1",
        "--state",
        str(tmp / "s.db"),
        *extra,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("recgen: serving on "):
            return proc, int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"serve exited with {proc.wait()}")


def wait_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(100):
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                return
        except grpc.RpcError:
            time.sleep(0.1)
    raise TimeoutError


def test_mutual_tls_and_token_rights(model_root: Path, pki: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# role token\nserve {SERVE_TOKEN}\nadmin {ADMIN_TOKEN}\n")
    proc, port = start(
        model_root,
        tmp_path,
        "--tls-cert",
        str(pki / "server.pem"),
        "--tls-key",
        str(pki / "server.key"),
        "--tls-client-ca",
        str(pki / "ca.pem"),
        "--auth-tokens",
        str(tokens),
        "--feedback-rate",
        "1",
        "--feedback-burst",
        "3",
    )
    target = f"localhost:{port}"
    ca = (pki / "ca.pem").read_bytes()
    try:
        client = grpc.ssl_channel_credentials(
            ca, (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()
        )
        with grpc.secure_channel(target, client) as ch:
            wait_serving(ch)  # health is open: probes carry no token
            s = pbg.RecommenderStub(ch)
            req = pb.RecommendRequest(user_id="sec", k=3)
            with pytest.raises(grpc.RpcError) as e:
                s.Recommend(req, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:
                s.Recommend(req, timeout=10, metadata=[("authorization", "Bearer wrong-token-xxxxxxxx")])
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            serve = [("authorization", f"Bearer {SERVE_TOKEN}")]
            admin = [("authorization", f"Bearer {ADMIN_TOKEN}")]
            assert len(s.Recommend(req, timeout=10, metadata=serve).items) == 3
            with pytest.raises(grpc.RpcError) as e:
                s.ForgetUser(pb.ForgetUserRequest(user_id="sec"), timeout=10, metadata=serve)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED

            # Per-user feedback limit: a burst of 3, then RESOURCE_EXHAUSTED; others unaffected.
            codes = []
            for i in range(6):
                try:
                    s.SendFeedback(
                        pb.SendFeedbackRequest(
                            event_id=f"sec-{i}", user_id="sec", item_id="1", type=pb.FEEDBACK_TYPE_VIEW
                        ),
                        timeout=10,
                        metadata=serve,
                    )
                    codes.append("OK")
                except grpc.RpcError as err:
                    codes.append(err.code().name)
            assert codes[:3] == ["OK"] * 3 and "RESOURCE_EXHAUSTED" in codes[3:]
            s.SendFeedback(
                pb.SendFeedbackRequest(
                    event_id="other-1", user_id="other", item_id="1", type=pb.FEEDBACK_TYPE_VIEW
                ),
                timeout=10,
                metadata=serve,
            )

            # ForgetUser (admin): nothing of the user is left in the store.
            r = s.ForgetUser(pb.ForgetUserRequest(user_id="sec"), timeout=10, metadata=admin)
            assert r.events_deleted == 3 and r.impressions_deleted >= 1
            with sqlite3.connect(tmp_path / "s.db") as db:
                for table in ("events", "impressions"):
                    n = db.execute(f"SELECT COUNT(*) FROM {table} WHERE user_id='sec'").fetchone()[0]
                    assert n == 0, table
                assert db.execute("SELECT COUNT(*) FROM events WHERE user_id='other'").fetchone()[0] == 1

        # Without a client certificate, mutual TLS refuses the connection.
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(ca)) as ch:
            with pytest.raises(grpc.RpcError) as e:
                pbg.RecommenderStub(ch).Recommend(
                    req, timeout=5, metadata=[("authorization", f"Bearer {SERVE_TOKEN}")]
                )
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # Plaintext to a TLS port fails too.
        with grpc.insecure_channel(target) as ch:
            with pytest.raises(grpc.RpcError):
                pbg.RecommenderStub(ch).Recommend(req, timeout=5)
    finally:
        if proc.stdout:
            proc.stdout.close()
        assert stop(proc, signal.SIGTERM) == 0


def _reflection_v1(ch: grpc.Channel, metadata: list[tuple[str, str]] | None = None) -> list[str]:
    """Service names from a raw grpc.reflection.v1 call (the same bytes as v1alpha's messages)."""
    call = ch.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (r,) = call(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10, metadata=metadata
    )
    return [s.name for s in r.list_services_response.service]


@pytest.mark.parametrize("closed", [False, True], ids=["open-by-default", "auth-health-and-reflection"])
def test_tokens_leave_health_and_reflection_open_unless_asked(
    model_root: Path, tmp_path: Path, closed: bool
) -> None:
    """grpcurl and probes carry no token: with --auth-tokens, health (Check, List) and reflection
    (v1, v1alpha) still answer them; --auth-health --auth-reflection close both too."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"serve {SERVE_TOKEN}\n")
    extra = ("--auth-health", "--auth-reflection") if closed else ()
    proc, port = start(model_root, tmp_path, "--auth-tokens", str(tokens), *extra)
    serve = [("authorization", f"Bearer {SERVE_TOKEN}")]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            probes: list[Callable[[list[tuple[str, str]] | None], object]] = [
                lambda md: health.Check(health_pb2.HealthCheckRequest(), timeout=10, metadata=md),
                lambda md: health.List(health_pb2.HealthListRequest(), timeout=10, metadata=md),
                lambda md: _reflection_v1(ch, md),
                lambda md: list(
                    reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                        timeout=10,
                        metadata=md,
                    )
                ),
            ]
            for probe in probes:
                probe(serve)  # a valid token always passes
                if closed:
                    with pytest.raises(grpc.RpcError) as e:
                        probe(None)
                    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
                else:
                    probe(None)
            assert "recgen.v1.Recommender" in _reflection_v1(ch, serve)
            with pytest.raises(grpc.RpcError) as e:  # the service itself stays closed either way
                pbg.RecommenderStub(ch).Recommend(pb.RecommendRequest(user_id="anon", k=3), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        if proc.stdout:
            proc.stdout.close()
        assert stop(proc, signal.SIGTERM) == 0
