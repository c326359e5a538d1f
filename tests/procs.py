"""Start real recgen processes for end-to-end tests and always stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def recgen(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "recgen.cli", *args], cwd=ROOT, env=env, **kw)


def wait_healthy(target: str, proc: subprocess.Popen, service: str = "", timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before serving")
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{target} not serving after {timeout} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Gateway:
    """`recgen serve` on a free port (--port 0; the port is read from its stdout)."""

    def __init__(self, models: Path, state: Path, *extra: str) -> None:
        self.models, self.state, self.extra = models, state, extra
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 180.0) -> Gateway:
        self.proc = recgen(
            "serve",
            "--models",
            str(self.models),
            "--port",
            "0",
            "--state",
            str(self.state),
            *self.extra,
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"serve exited with {self.proc.wait()} before serving")
            if line.startswith("recgen: serving on "):
                self.port = int(line.rsplit(":", 1)[1])
                wait_healthy(self.target, self.proc)
                return self
        raise TimeoutError("serve did not start")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        code = stop(self.proc, sig)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code
