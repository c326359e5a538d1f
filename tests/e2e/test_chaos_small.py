"""Chaos, the short version for `make test`: a hung worker is replaced under load.

SIGSTOP leaves a worker's socket open and its process alive, so nothing fails
fast: only health checks that time out can find it. The gateway must take it
out of rotation, kill and restart it, and the requests that were in flight on
it must be retried elsewhere, while clients keep getting answers. The full
set of scenarios (SIGKILL, durability, overload, deadlines) is `make chaos`
(tools/chaos.py); this is the one that guards the supervision logic.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tests.procs import recgen, stop, wait_healthy

pytestmark = pytest.mark.e2e

CLIENTS = 3
REQUEST_TIMEOUT = 20.0  # far above detection + restart: in-flight requests must be retried, not expire


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        name: float(value)
        for line in text.splitlines()
        if line and not line.startswith("#")
        for name, value in [line.rsplit(" ", 1)]
    }


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out.update(int(c) for c in (task / "children").read_text().split())
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@contextlib.contextmanager
def gateway_with_metrics(models: Path, state: Path):
    proc = recgen(
        "serve",
        "--models",
        str(models),
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--workers",
        "2",
        "--max-new-tokens",
        "16",
        "--state",
        str(state),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        target = url = ""
        while not target:  # the metrics line comes first, then the serving line
            line = proc.stdout.readline()
            assert line, f"serve exited with {proc.wait()}"
            if line.startswith("recgen: metrics on "):
                url = line.split("metrics on ")[1].strip()
            if line.startswith("recgen: serving on "):
                target = line.split("serving on ")[1].strip()
        assert url
        wait_healthy(target, proc)
        yield proc, target, url
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        stop(proc, signal.SIGTERM)


def test_hung_worker_is_taken_out_and_restarted_while_requests_succeed(
    model_root: Path, tmp_path: Path
) -> None:
    with gateway_with_metrics(model_root, tmp_path / "s.db") as (proc, target, url):
        workers = children(proc.pid)
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
                m = scrape(url)
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
        now = children(proc.pid)
        assert len(now) == 2 and victim not in now
        codes = [c for _, c in outcomes]
        failed = [c for c in codes if c != "OK"]
        assert not failed, f"{len(failed)} of {len(codes)} requests failed: {sorted(set(failed))}"
        during = [c for t, c in outcomes if t_stop < t < t_back]
        assert during, "no request was answered while the worker was hung"
        # Detection is by health checks (1 s timeout, out after 2 misses): seconds, not the deadline.
        assert t_out - t_stop < 10.0
