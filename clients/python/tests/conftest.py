"""The server these tests talk to, from the environment (tests/e2e/test_python_client.py
in the repository starts a real `recgen serve` with mutual TLS and tokens, then runs
these tests from a fresh venv that holds only the built wheel):

    RECGEN_TEST_TARGET        host:port (the certificate's name: localhost)
    RECGEN_TEST_CA            the CA's PEM (server certificate roots)
    RECGEN_TEST_CERT/_KEY     a client certificate and key the server's CA signed
    RECGEN_TEST_SERVE_TOKEN   a serve token;  RECGEN_TEST_ADMIN_TOKEN: an admin token
    RECGEN_TEST_ISOLATED=1    also check that nothing of the server is importable

Without RECGEN_TEST_TARGET the tests that need a server are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from recgen_client import RecgenClient


@dataclass(frozen=True)
class Server:
    target: str
    ca: bytes
    cert: tuple[bytes, bytes]
    serve_token: str
    admin_token: str

    def client(self, token: str | None = "serve", **kw: object) -> RecgenClient:
        tok = {"serve": self.serve_token, "admin": self.admin_token}.get(token or "", token)
        kw.setdefault("tls", self.ca)
        kw.setdefault("client_cert", self.cert)
        return RecgenClient(self.target, token=tok, timeout=30.0, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def server() -> Server:
    target = os.environ.get("RECGEN_TEST_TARGET")
    if not target:
        pytest.skip("RECGEN_TEST_TARGET not set: run through tests/e2e/test_python_client.py")
    env = os.environ
    return Server(
        target=target,
        ca=Path(env["RECGEN_TEST_CA"]).read_bytes(),
        cert=(Path(env["RECGEN_TEST_CERT"]).read_bytes(), Path(env["RECGEN_TEST_KEY"]).read_bytes()),
        serve_token=env["RECGEN_TEST_SERVE_TOKEN"],
        admin_token=env["RECGEN_TEST_ADMIN_TOKEN"],
    )


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[RecgenClient]:
    with server.client("serve") as rc:
        rc.wait_ready(30)
        yield rc


@pytest.fixture(scope="session")
def admin(server: Server) -> Iterator[RecgenClient]:
    with server.client("admin") as rc:
        yield rc
