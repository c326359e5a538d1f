"""A gRPC health check from the command line, for container and exec probes.

    python -m recgen.healthcheck 127.0.0.1:50051
    RECGEN_HEALTH_ADDRESS=127.0.0.1:50052 python -m recgen.healthcheck
    python -m recgen.healthcheck --tls-ca ca.crt --tls-cert c.crt --tls-key c.key \\
        --server-name recgen-worker 127.0.0.1:50052

Asks grpc.health.v1 once and exits 0 only for SERVING; 1 for NOT_SERVING,
UNKNOWN, an error or no answer within --timeout (the reason on stderr). It
exists because Docker's HEALTHCHECK runs a command, and Kubernetes' native
gRPC probe speaks plaintext only, so a TLS-only worker needs an exec probe.
It imports nothing of recgen's serving code, so it starts fast and holds no
model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not (args.tls_ca or args.tls_cert):
        return grpc.insecure_channel(args.address)
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(args.tls_ca).read_bytes() if args.tls_ca else None,
        private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
        certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
    )
    # The probe dials 127.0.0.1, which the server's certificate does not name.
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.address, creds, options=options)


def check(args: argparse.Namespace) -> tuple[bool, str]:
    with _channel(args) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as e:
            return False, f"{e.code().name}: {e.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recgen.healthcheck", description=__doc__.splitlines()[0])
    ap.add_argument(
        "address",
        nargs="?",
        default=os.environ.get("RECGEN_HEALTH_ADDRESS", "127.0.0.1:50051"),
        help="HOST:PORT (or unix:PATH) of a recgen gateway or worker "
        "(default: $RECGEN_HEALTH_ADDRESS, else 127.0.0.1:50051)",
    )
    ap.add_argument("--service", default="", help="service name to ask about (default: the whole server)")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds")
    ap.add_argument("--tls-ca", help="PEM CA bundle that signed the server's certificate (enables TLS)")
    ap.add_argument("--tls-cert", help="PEM client certificate chain (mutual TLS)")
    ap.add_argument("--tls-key", help="PEM private key for --tls-cert")
    ap.add_argument("--server-name", help="name to verify the server's certificate against")
    args = ap.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    ok, why = check(args)
    print(f"{args.address}: {why}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
