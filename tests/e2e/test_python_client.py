"""The Python client package (clients/python) as a user gets it: its wheel built by
clients/python/build.py (what `make clients-python-wheel` runs), installed into a fresh venv
that holds nothing else, then clients/python/tests run from that venv against a real
`recgen serve` with mutual TLS and tokens.

The venv proves the package needs only grpcio and protobuf: before pytest goes in, its
installed distributions are exactly the wheel, grpcio, protobuf (and grpcio's
typing-extensions), `recgen` is not importable, and one real Recommend succeeds. pip takes
grpcio / protobuf / pytest from the configured package index or the local pip cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.pki import issue, make_ca
from tools.harness.procs import ROOT, Gateway

pytestmark = pytest.mark.e2e

CLIENT = ROOT / "clients" / "python"
SERVE_TOKEN = "pyclient-serve-0123456789abcdef"
ADMIN_TOKEN = "pyclient-admin-0123456789abcdef"
PYTEST_PIN = "pytest==9.2.0"  # as pyproject.toml's dev extra
ALLOWED = {"recgen-client", "grpcio", "protobuf", "typing-extensions"}

SMOKE = """
import importlib.util, os, sys
from pathlib import Path
from recgen_client import RecgenClient
assert importlib.util.find_spec("recgen") is None, "recgen is importable"
e = os.environ
with RecgenClient(e["RECGEN_TEST_TARGET"], token=e["RECGEN_TEST_SERVE_TOKEN"],
                  tls=Path(e["RECGEN_TEST_CA"]).read_bytes(),
                  client_cert=(Path(e["RECGEN_TEST_CERT"]).read_bytes(),
                               Path(e["RECGEN_TEST_KEY"]).read_bytes())) as rc:
    rec = rc.recommend("fresh-venv", k=3, timeout=30)
print(len(rec.items), rec.model_version, rec.items[0].title)
"""


def run(cmd: list[str], *, timeout: float, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"$ {' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    return r


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would let the venv see this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, **extra}


def fresh_venv(path: Path) -> Path:
    """A venv with no pip and no packages (pip is run from this interpreter with --python)."""
    try:
        venv.EnvBuilder(with_pip=False, clear=True).create(path)
    except Exception as e:  # e.g. no venv support in this Python build
        pytest.skip(f"cannot create a venv: {e}")
    return path / "bin" / "python"


def wait_serving(target: str, creds: grpc.ChannelCredentials, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.secure_channel(target, creds) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise TimeoutError(f"{target} not serving after {timeout} s")


def test_client_wheel_in_a_fresh_venv_against_a_real_server(model_root: Path, tmp_path: Path) -> None:
    # The wheel, as `make clients-python-wheel` builds it.
    out = run([sys.executable, str(CLIENT / "build.py"), "--dist", str(tmp_path / "dist")], timeout=120)
    wheel = Path(out.stdout.strip().splitlines()[-1])
    assert wheel.is_file() and wheel.name.startswith("recgen_client-")

    py = fresh_venv(tmp_path / "venv")
    pip = [sys.executable, "-m", "pip", "--python", str(py), "--disable-pip-version-check"]
    run([*pip, "install", "-q", str(wheel)], timeout=180, env=clean_env())
    listed = json.loads(run([*pip, "list", "--format", "json"], timeout=60, env=clean_env()).stdout)
    installed = {d["name"].lower().replace("_", "-") for d in listed} - {"pip", "setuptools"}
    assert installed == ALLOWED, installed

    # A real server: mutual TLS (a throwaway CA) and serve / admin tokens.
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki)
    issue(pki, "server", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    issue(pki, "client", "extendedKeyUsage=clientAuth")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"serve {SERVE_TOKEN}\nadmin {ADMIN_TOKEN}\n")
    tls = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
    tls += ["--tls-client-ca", str(pki / "ca.pem")]
    gw = Gateway(
        model_root, tmp_path / "state.db", "--workers", "1", "--auth-tokens", str(tokens), *tls,
        wait_health=False,
    )  # fmt: skip
    gw.start()
    try:
        target = f"localhost:{gw.port}"
        ca = (pki / "ca.pem").read_bytes()
        creds = grpc.ssl_channel_credentials(
            ca, (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()
        )
        wait_serving(target, creds)
        env = clean_env(
            RECGEN_TEST_TARGET=target,
            RECGEN_TEST_CA=str(pki / "ca.pem"),
            RECGEN_TEST_CERT=str(pki / "client.pem"),
            RECGEN_TEST_KEY=str(pki / "client.key"),
            RECGEN_TEST_SERVE_TOKEN=SERVE_TOKEN,
            RECGEN_TEST_ADMIN_TOKEN=ADMIN_TOKEN,
            RECGEN_TEST_ISOLATED="1",
        )
        # Import and one real call with only grpcio and protobuf installed.
        smoke = run([str(py), "-c", SMOKE], timeout=60, env=env, cwd=tmp_path)
        assert smoke.stdout.split()[0] == "3", smoke.stdout

        # The package's own tests, from the venv (pytest added now, after the proof above).
        run([*pip, "install", "-q", PYTEST_PIN], timeout=180, env=clean_env())
        tests = run(
            [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(CLIENT / "pyproject.toml"),
             "--rootdir", str(CLIENT), str(CLIENT / "tests")],
            timeout=240, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert " passed" in tests.stdout and "skipped" not in tests.stdout, tests.stdout
    finally:
        gw.stop(signal.SIGTERM)
