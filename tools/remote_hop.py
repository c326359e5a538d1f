"""The cost of the remote hop: a gateway with its worker on a unix socket vs on another host.

    sudo .venv/bin/python -m tools.remote_hop --models models --json docs/scaling.json

Two network namespaces joined by a veth link stand for two hosts: the gateway
and the load generator (tools.loadtest) in one, the worker in the other.
Three set-ups, each in every round, one after another, so that they share
the machine's state: `local` (`--workers 1`, unix socket, the baseline),
`remote-tls` (`recgen worker --listen IP:PORT` with mutual TLS) and
`remote-plain` (the same without TLS, to split the TLS share from the TCP
share). Plain Recommend (no text), closed loop at each concurrency. One
machine's cores are shared by both "hosts", so this measures what one hop
adds, not what two machines can carry. Needs root (ip netns); everything it
makes is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.harness.procfs import cpu_s
from tools.harness.procs import Gateway, Worker, run_module

GW_IP, WORKER_IP, PORT = "198.18.3.1", "198.18.3.2", 7443
SETUPS = ("local", "remote-tls", "remote-plain")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def make_pki(d: Path) -> None:
    """ca, a worker certificate for WORKER_IP, a gateway client certificate (openssl CLI)."""

    def ossl(*a: str) -> None:
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
         "-subj", "/CN=recgen-bench-ca")  # fmt: skip
    for name, ext in (
        ("worker", f"subjectAltName=IP:{WORKER_IP}"),
        ("gateway", "extendedKeyUsage=clientAuth"),
    ):
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}")  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")  # fmt: skip


class Hosts:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.gw, self.w = f"recgen-{tag}-gw", f"recgen-{tag}-w"
        self.made: list[str] = []

    def up(self) -> None:
        for ns in (self.gw, self.w):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip",
            "-n",
            self.gw,
            "link",
            "add",
            "hop0",
            "type",
            "veth",
            "peer",
            "name",
            "hop1",
            "netns",
            self.w,
        )
        sh("ip", "-n", self.gw, "addr", "add", f"{GW_IP}/30", "dev", "hop0")
        sh("ip", "-n", self.w, "addr", "add", f"{WORKER_IP}/30", "dev", "hop1")
        sh("ip", "-n", self.gw, "link", "set", "hop0", "up")
        sh("ip", "-n", self.w, "link", "set", "hop1", "up")

    def down(self) -> None:
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def netns(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def run_setup(
    setup: str, hosts: Hosts, args: argparse.Namespace, pki: Path, work: Path
) -> list[dict[str, Any]]:
    threads = str(args.threads or os.cpu_count() or 1)
    log = work / f"{setup}.log"
    # Neither process is reachable from this network namespace: no health checks from here.
    worker = None
    serve: list[str] = []
    if setup == "local":
        serve += ["--workers", "1"]
    else:
        tls = setup == "remote-tls"
        wargs = ["--tls-cert", str(pki / "worker.pem"), "--tls-key", str(pki / "worker.key"),
                 "--tls-client-ca", str(pki / "ca.pem")] if tls else ["--insecure"]  # fmt: skip
        worker = Worker(args.models, f"{WORKER_IP}:{PORT}", "--threads", threads, *wargs,
                        name=f"{setup}-worker", log_dir=work, prefix=netns(hosts.w),
                        wait_health=False)  # fmt: skip
        gargs = ["--worker-tls-ca", str(pki / "ca.pem"), "--worker-tls-cert", str(pki / "gateway.pem"),
                 "--worker-tls-key", str(pki / "gateway.key")] if tls else ["--worker-insecure"]  # fmt: skip
        serve += ["--workers", "0", "--worker-address", f"{WORKER_IP}:{PORT}", *gargs]
    gateway = Gateway(
        args.models,
        work / "s.db",
        *serve,
        name=setup,
        log_dir=work,
        prefix=netns(hosts.gw),
        wait_health=False,
    )
    try:
        if worker is not None:
            worker.start()
        gateway.start(timeout=660.0)  # the gateway waits for its worker (up to 600 s)
        # Server CPU per request: the gateway and its worker, from /proc, around each level's run.
        pids = {"gateway": gateway.pid, "worker": worker.pid if worker else gateway.worker_pids()[0]}
        reports = []
        for c in args.concurrency:
            out = work / f"{setup}-{c}.json"
            before = {k: cpu_s(pid) for k, pid in pids.items()}
            try:
                run_module(["-m", "tools.loadtest", "--target", gateway.target, "--name", setup,
                            "--concurrency", str(c), "--duration", str(args.duration),
                            "--wait-ready", "60", "--json", str(out)],
                           log=log, timeout=args.duration + 180, prefix=netns(hosts.gw))  # fmt: skip
            except subprocess.CalledProcessError as e:
                raise RuntimeError(f"{setup}: loadtest failed; see {log}") from e
            (r,) = json.loads(out.read_text())["reports"]
            for k, pid in pids.items():  # no warm-up: every request the CPU served is counted
                r[f"{k}_cpu_ms_per_request"] = round(
                    1000 * (cpu_s(pid) - before[k]) / max(1, r["requests"]), 3
                )
            reports.append(r)
        return reports
    finally:
        gateway.stop()
        if worker is not None:
            worker.stop()


def summarize(reports: list[dict[str, Any]], levels: list[int]) -> list[dict[str, Any]]:
    """Median over rounds per set-up and concurrency, with ratios to `local` at the same concurrency."""
    rows = []
    for c in levels:
        base: dict[str, float] = {}
        for setup in SETUPS:
            rs = [r for r in reports if r["name"] == setup and r["concurrency"] == c]
            if not rs:
                continue
            row = {
                "setup": setup,
                "concurrency": c,
                "runs": len(rs),
                "ok_per_s": statistics.median(r["throughput"] for r in rs),
                "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in rs),
                "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "gateway_cpu_ms": statistics.median(r["gateway_cpu_ms_per_request"] for r in rs),
                "worker_cpu_ms": statistics.median(r["worker_cpu_ms_per_request"] for r in rs),
            }
            if setup == "local":
                base = row
            elif base:
                row["p50_vs_local"] = round(row["p50_ms"] / base["p50_ms"], 3)
                row["p99_vs_local"] = round(row["p99_ms"] / base["p99_ms"], 3)
                row["throughput_vs_local"] = round(row["ok_per_s"] / base["ok_per_s"], 3)
                row["p50_added_ms"] = round(row["p50_ms"] - base["p50_ms"], 2)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.remote_hop", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="models")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    p.add_argument("--rounds", type=int, default=2, help="each set-up runs once per round")
    p.add_argument("--threads", type=int, default=0, help="worker threads (0: cores, as `--workers 1` gives)")
    p.add_argument("--json", help="write the reports and the summary here")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root: it makes network namespaces (ip netns)")
    hosts = Hosts()
    reports: list[dict[str, Any]] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="recgen-hop-") as tmp:
        work = Path(tmp)
        make_pki(work)
        try:
            hosts.up()
            for rnd in range(args.rounds):
                for setup in SETUPS:
                    rs = run_setup(setup, hosts, args, work, work)
                    for r in rs:
                        r["round"] = rnd
                    reports += rs
                    print(f"round {rnd} {setup}: " + ", ".join(
                        f"c={r['concurrency']} {r['throughput']:.0f} ok/s p50 {r['latency_ms']['p50']:.1f} ms"
                        f" cpu/req gw {r['gateway_cpu_ms_per_request']:.2f}"
                        f" wk {r['worker_cpu_ms_per_request']:.2f}"
                        for r in rs), flush=True)  # fmt: skip
        finally:
            hosts.down()
    rows = summarize(reports, args.concurrency)
    print(
        f"\n{'setup':<14}{'conc':>5}{'ok/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p50 x':>8}{'p99 x':>8}{'tput x':>8}{'gw cpu':>8}{'wk cpu':>8}"
    )
    for r in rows:
        ratios = "".join(
            f"{r[k]:>8.2f}" if k in r else f"{'1':>8}"
            for k in ("p50_vs_local", "p99_vs_local", "throughput_vs_local")
        )
        print(
            f"{r['setup']:<14}{r['concurrency']:>5}{r['ok_per_s']:>9.1f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{ratios}{r['gateway_cpu_ms']:>8.2f}{r['worker_cpu_ms']:>8.2f}"
        )
    if args.json:
        meta = {
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "wall_s": round(time.monotonic() - t0, 1),
        }
        Path(args.json).write_text(
            json.dumps({"meta": meta, "summary": rows, "reports": reports}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
