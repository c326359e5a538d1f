"""TLS credentials of a gRPC listener from PEM files: the gateway's public port and a worker's HOST:PORT.

One definition for both, so they cannot drift. Channel (client) credentials
for the gateway's hop to remote workers are server/worker_conn.py's. This
module checks no certificate itself; gRPC does, at the handshake.
"""

from __future__ import annotations

from pathlib import Path

import grpc


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS with cert's chain and key; mutual TLS (clients need a certificate client_ca signed)
    when a client CA bundle is given."""
    ca = Path(client_ca).read_bytes() if client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )
