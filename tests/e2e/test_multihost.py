"""Gateway and workers on three hosts made on one machine with network namespaces.

Three namespaces joined by two veth links (198.18.0.0/15 is the range set
aside for network tests): the gateway in one, a `recgen worker` in each of
the others, every hop over mutual TLS. The gateway finds the workers by a
DNS name that resolves to both (a hosts file that `ip netns exec` mounts over
/etc/hosts, the way a Kubernetes headless service answers with every pod),
and checks their certificates against that name while dialling their IPs.
While a client in the gateway's namespace sends Recommend calls: one
worker's link is cut (`ip link set ... down`), brought back, and then the
other worker is killed. The error budget of the reliability issue is zero
failed calls: a lost worker costs only the calls in flight on it, and Rank
retries those on the other. Then the name stops resolving to the killed
worker (drained and retired) and a fresh worker is discovered under it.
Everything made here is removed in a finalizer, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pki import issue, make_ca
from tools.harness.procs import ROOT

pytestmark = pytest.mark.e2e

NAME = "workers.recgen.test"
PORT = 7443
LINKS = {"a": ("198.18.1.1", "198.18.1.2"), "b": ("198.18.2.1", "198.18.2.2")}  # (gateway end, worker end)

# Runs in the gateway's namespace: Recommend calls from a few threads until told to stop
# on stdin (bounded anyway), one JSON line per call: {"t": monotonic end time, "code": ...}.
CLIENT = r"""
import json, sys, threading, time
import grpc
from recgen.v1 import recommender_pb2 as pb, recommender_pb2_grpc as pbg
target, clients, max_calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stop, lock, n = threading.Event(), threading.Lock(), [0]
def run(c):
    with grpc.insecure_channel(target) as ch:
        s = pbg.RecommenderStub(ch)
        i = 0
        while not stop.is_set():
            with lock:
                if n[0] >= max_calls:
                    return
                n[0] += 1
            i += 1
            try:
                s.Recommend(pb.RecommendRequest(user_id=f"mh-{c}-{i % 11}", k=5), timeout=20)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            with lock:
                print(json.dumps({"t": time.monotonic(), "code": code}), flush=True)
            time.sleep(0.05)
ts = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
for t in ts: t.start()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
for t in ts: t.join()
"""

# Runs in the gateway's namespace: what a worker's TLS port accepts.
PROBE = r"""
import json, sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
ip, port, name, pki = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ca, key, cert = (open(f"{pki}/{f}", "rb").read() for f in ("ca.pem", "gateway.key", "gateway.pem"))
def check(creds, override=None):
    opts = [("grpc.ssl_target_name_override", override)] if override else []
    target = f"{ip}:{port}"
    ch = grpc.insecure_channel(target) if creds is None else grpc.secure_channel(target, creds, opts)
    try:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
    except grpc.RpcError as e:
        return e.code().name
    finally:
        ch.close()
print(json.dumps({
    "plaintext": check(None),
    "tls_without_client_cert": check(grpc.ssl_channel_credentials(ca), name),
    "mtls_checked_against_ip": check(grpc.ssl_channel_credentials(ca, key, cert)),
    "mtls_checked_against_name": check(grpc.ssl_channel_credentials(ca, key, cert), name),
}))
"""


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class Hosts:
    """The namespaces, links, hosts file and processes of one test run; `close` removes them all."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns = {role: f"recgen-{tag}-{role}" for role in ("gw", "a", "b")}
        self.gw_if = {w: f"rg{tag}g{w}" for w in LINKS}  # veth names: at most 15 characters
        self.etc = Path("/etc/netns") / self.ns["gw"]
        self.procs: list[subprocess.Popen] = []
        self.made: list[str] = []

    def up(self) -> None:
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for w, (gw_ip, w_ip) in LINKS.items():
            peer = self.gw_if[w][:-2] + "w" + w
            sh("ip", "-n", self.ns["gw"], "link", "add", self.gw_if[w], "type", "veth", "peer", "name", peer,
               "netns", self.ns[w])  # fmt: skip
            sh("ip", "-n", self.ns["gw"], "addr", "add", f"{gw_ip}/30", "dev", self.gw_if[w])
            sh("ip", "-n", self.ns[w], "addr", "add", f"{w_ip}/30", "dev", peer)
            sh("ip", "-n", self.ns["gw"], "link", "set", self.gw_if[w], "up")
            sh("ip", "-n", self.ns[w], "link", "set", peer, "up")
        self.etc.mkdir(parents=True, exist_ok=True)

    def resolve_name_to(self, *workers: str) -> None:
        # Written in place: the running gateway sees this inode through its bind mount.
        lines = ["127.0.0.1 localhost", *(f"{LINKS[w][1]} {NAME}" for w in workers)]
        with open(self.etc / "hosts", "w") as f:
            f.write("\n".join(lines) + "\n")

    def spawn(self, role: str, *args: str, **kw) -> subprocess.Popen:
        cmd = ["ip", "netns", "exec", self.ns[role], sys.executable, *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, **kw)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for ns in self.made:  # deleting a namespace deletes the veth ends in it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self.etc.is_dir():
            for f in self.etc.iterdir():
                f.unlink()
            self.etc.rmdir()


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    h = Hosts()
    try:
        try:
            h.up()
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            err = getattr(e, "stderr", "") or str(e)
            pytest.skip(f"cannot make network namespaces here: {err.strip()}")
        yield h
    finally:
        h.close()
        assert not any(ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
                       for ns in h.made), "a namespace was left behind"  # fmt: skip


class Log:
    """A process's stderr, read as it grows; waits for lines matching a pattern."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def wait(self, pattern: str, timeout: float, proc: subprocess.Popen | None = None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.path.read_text(errors="replace"))
            if m:
                return m.group(0)
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.path.read_text(errors="replace")[-3000:]
        raise AssertionError(f"no {pattern!r} in the log within {timeout} s:\n{tail}")

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.path.read_text(errors="replace")))


def start_worker(h: Hosts, w: str, models: Path, pki: Path, log: Path) -> subprocess.Popen:
    return h.spawn(
        w, "-m", "recgen.cli", "worker", "--models", str(models), "--listen", f"{LINKS[w][1]}:{PORT}",
        "--threads", "1", "--tls-cert", str(pki / f"worker-{w}.pem"),
        "--tls-key", str(pki / f"worker-{w}.key"), "--tls-client-ca", str(pki / "ca.pem"),
        stdout=subprocess.DEVNULL, stderr=log.open("a"),
    )  # fmt: skip


def test_workers_on_other_hosts_over_tls_survive_a_cut_link_and_a_killed_worker(
    hosts: Hosts, model_root: Path, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki)
    for w in LINKS:  # certificates name the service, not the pod IPs (they change)
        issue(pki, f"worker-{w}", f"subjectAltName=DNS:{NAME}")
    issue(pki, "gateway", "extendedKeyUsage=clientAuth")
    hosts.resolve_name_to("a", "b")

    workers = {w: start_worker(hosts, w, model_root, pki, tmp_path / f"worker-{w}.log") for w in LINKS}
    for w, p in workers.items():
        Log(tmp_path / f"worker-{w}.log").wait(r"worker serving model", 120, p)

    # What a worker's port accepts, seen from the gateway's host.
    probe = hosts.spawn("gw", "-c", PROBE, LINKS["a"][1], str(PORT), NAME, str(pki), stdout=subprocess.PIPE)
    seen = json.loads(probe.communicate(timeout=60)[0])
    assert seen["plaintext"] == "UNAVAILABLE"
    assert seen["tls_without_client_cert"] == "UNAVAILABLE"
    assert seen["mtls_checked_against_ip"] == "UNAVAILABLE"  # the certificate names the service only
    assert seen["mtls_checked_against_name"] == "SERVING"

    glog = Log(tmp_path / "gateway.log")
    gateway = hosts.spawn(
        "gw", "-m", "recgen.cli", "serve", "--models", str(model_root), "--port", "0", "--workers", "0",
        "--worker-address", f"dns:///{NAME}:{PORT}", "--worker-tls-ca", str(pki / "ca.pem"),
        "--worker-tls-cert", str(pki / "gateway.pem"), "--worker-tls-key", str(pki / "gateway.key"),
        "--state", str(tmp_path / "s.db"), "--no-metrics",
        stdout=subprocess.PIPE, stderr=glog.path.open("a"), text=True,
    )  # fmt: skip
    assert gateway.stdout is not None
    watchdog = threading.Timer(120, gateway.kill)  # a gateway that never serves must not hang the test
    watchdog.start()
    line = gateway.stdout.readline()
    watchdog.cancel()
    assert line.startswith("recgen: serving on "), f"gateway exited with {gateway.poll()}: {line!r}"
    target = line.split("serving on ")[1].strip()
    name = {w: re.escape(f"{NAME}/{LINKS[w][1]}:{PORT}") for w in LINKS}
    for w in LINKS:  # both addresses the name resolves to are in rotation
        glog.wait(rf"worker {name[w]} (ready|in rotation)", 30, gateway)

    client = hosts.spawn(
        "gw", "-c", CLIENT, target, "4", "5000", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    outcomes: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: outcomes.extend((r["t"], r["code"]) for r in map(json.loads, client.stdout or [])),
        daemon=True,
    )
    reader.start()

    def calls_after(t: float) -> int:
        return sum(1 for end, _ in list(outcomes) if end > t)

    def traffic(t: float, n: int = 40, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while calls_after(t) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calls_after(t) >= n, f"only {calls_after(t)} calls answered in {timeout} s"

    try:
        traffic(0.0)
        # 1. Cut worker a's link mid-traffic: its calls in flight fail by keepalive and are retried on b.
        t_cut = time.monotonic()
        sh("ip", "-n", hosts.ns["gw"], "link", "set", hosts.gw_if["a"], "down")
        glog.wait(rf"worker {name['a']} (fails health checks|unreachable): out of rotation", 15)
        traffic(t_cut, n=40)
        traffic(time.monotonic())  # answered by b alone
        # 2. The link comes back: a passes its health checks and is put back.
        sh("ip", "-n", hosts.ns["gw"], "link", "set", hosts.gw_if["a"], "up")
        t_up = time.monotonic()
        glog.wait(rf"worker {name['a']} in rotation", 20)
        traffic(t_up)
        # 3. Kill worker b outright: its socket closes, its calls in flight are retried on a.
        t_kill = time.monotonic()
        workers["b"].kill()
        glog.wait(rf"worker {name['b']} (fails health checks|unreachable): out of rotation", 15)
        traffic(t_kill, n=40)
        traffic(time.monotonic())  # answered by a alone, back from its cut link
    finally:
        if client.poll() is None and client.stdin is not None:
            client.stdin.write("stop\n")
            client.stdin.flush()
        client.wait(40)
        reader.join(10)

    codes = [c for _, c in outcomes]
    failed = [c for c in codes if c != "OK"]
    assert not failed, f"{len(failed)} of {len(codes)} Recommend calls failed: {sorted(set(failed))}"
    assert len(codes) >= 240

    # 4. DNS stops naming b: it is retired. Then a fresh worker b appears under the name and is admitted.
    hosts.resolve_name_to("a")
    glog.wait(rf"worker {name['b']} retired", 20)
    restarted = start_worker(hosts, "b", model_root, pki, tmp_path / "worker-b2.log")
    Log(tmp_path / "worker-b2.log").wait(r"worker serving model", 120, restarted)
    admitted_before = glog.count(rf"worker {name['b']} (ready|in rotation)")
    hosts.resolve_name_to("a", "b")
    glog.wait(rf"discovered worker {re.escape(LINKS['b'][1])}:{PORT}", 20)
    deadline = time.monotonic() + 20
    while glog.count(rf"worker {name['b']} (ready|in rotation)") <= admitted_before:
        assert time.monotonic() < deadline, "the rediscovered worker was not admitted"
        time.sleep(0.1)

    gateway.send_signal(signal.SIGTERM)
    assert gateway.wait(30) == 0
