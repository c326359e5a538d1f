"""Start recgen processes (`recgen serve`, `recgen worker`, `recgen export`, `python -m tools.X`) and
always stop them.

    recgen(*args, **popen_kw) -> Popen         python -m recgen.cli ARGS, in the repository root
    wait_healthy(target, proc, service="")      until grpc.health.v1 says SERVING (raises if proc dies)
    stop(proc, sig=SIGTERM, timeout=20) -> rc   signal, wait, SIGKILL if it does not exit in time
    Gateway(models, state, *extra)              `recgen serve --port 0 EXTRA`: .start() / .stop(sig),
                                                or `with Gateway(...) as gw:`; .target, .port, .url
                                                (metrics, with metrics=True), .pid, .worker_pids(),
                                                .worker_addresses(), .rss_mib(), .metrics()
    Worker(models, listen, *extra)              `recgen worker --listen ADDR EXTRA`, the same way
    run_module(args, log=..., timeout=...)      python -m ... to completion, output appended to a log
    scrape(url) -> {series: value}              a Prometheus text page, e.g. Gateway.url

Output: by default a process's stdout is a pipe read until the ready line and its stderr is
inherited (pytest shows it on failure). With `log_dir`, stdout goes to `log_dir/NAME.out` and
stderr is appended to `log_dir/NAME.log` (nothing can block on a full pipe), and TMPDIR points
under `log_dir`, so the workers' socket directory of a gateway killed with SIGKILL is not left
in /tmp. `prefix` runs the command under another (e.g. `ip netns exec NS`); such a process may
not be reachable from here, so pass `wait_health=False` then.

A gateway and its workers run in their own session: a stop that has to escalate kills the whole
process group, and workers that outlive their gateway are killed too. This module does not
pick ports (the kernel does: --port 0, read back from the ready line), nor parse anything a
process prints besides its ready lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tools.harness.procfs import alive, children, cmdline, rss_kib

LOG = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
SERVING_PREFIX = "recgen: serving on "
METRICS_PREFIX = "recgen: metrics on "
WORKER_SERVICE = "recgen.worker.v1.Worker"
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def env(root: Path = ROOT, threads: int | None = None, **extra: str) -> dict[str, str]:
    """os.environ with unbuffered output, `root` on PYTHONPATH and, with `threads`, the BLAS/OpenMP
    thread counts set to it."""
    out = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    out["PYTHONPATH"] = str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            out[var] = str(threads)
    return out


def recgen(*args: str, **kw: Any) -> subprocess.Popen:
    """`python -m recgen.cli ARGS` in the repository root; Popen keywords pass through."""
    kw.setdefault("env", {**os.environ, "PYTHONUNBUFFERED": "1"})
    return subprocess.Popen([sys.executable, "-m", "recgen.cli", *args], cwd=ROOT, **kw)


def wait_healthy(target: str, proc: subprocess.Popen, service: str = "", timeout: float = 120.0) -> None:
    """Until `target`'s health service says SERVING for `service`; raises when proc exits first."""
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
    """Send `sig` and wait; SIGKILL (its process group when it leads one) if it has not exited."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
    return proc.returncode


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """A Prometheus text page as {series with labels: value}."""
    text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def run_module(
    args: Sequence[str],
    *,
    log: Path,
    timeout: float,
    root: Path = ROOT,
    environ: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> None:
    """`python ARGS` (e.g. ["-m", "tools.gen_bench", ...]) to completion, its output appended to `log`;
    raises CalledProcessError on a non-zero exit and TimeoutExpired after `timeout`."""
    cmd = [*prefix, sys.executable, *args]
    LOG.info("$ %s", " ".join(cmd))
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        subprocess.run(
            cmd,
            cwd=root,
            env=dict(environ) if environ is not None else env(root),
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=True,
        )


class _Process:
    """One long-running child: started with its output routed, read until ready, always stopped."""

    kind = "process"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log_dir: Path | None,
        root: Path,
        environ: Mapping[str, str] | None,
        prefix: Sequence[str],
    ) -> None:
        self.argv, self.name, self.log_dir, self.root = list(argv), name, log_dir, root
        self.environ, self.prefix = environ, list(prefix)
        self.proc: subprocess.Popen | None = None
        self.started_s = 0.0  # from the start to ready

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.pid

    @property
    def log(self) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"{self.name}.log"

    def _spawn(self) -> None:
        e = dict(self.environ) if self.environ is not None else env(self.root)
        cmd = [*self.prefix, sys.executable, *self.argv]
        kw: dict[str, Any] = {"cwd": self.root, "stdin": subprocess.DEVNULL, "start_new_session": True}
        if self.log_dir is None:
            self.proc = subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, text=True, **kw)
            return
        tmp = self.log_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        if len(str(tmp)) <= 60:  # unix socket paths are limited to 107 bytes
            e["TMPDIR"] = str(tmp)
        assert self.log is not None
        with open(self.log_dir / f"{self.name}.out", "w") as fo, open(self.log, "a") as fe:
            fe.write(f"\n=== {' '.join(cmd)}\n")
            fe.flush()
            self.proc = subprocess.Popen(cmd, env=e, stdout=fo, stderr=fe, **kw)

    def _lines(self, deadline: float) -> Iterator[str]:
        """What the process prints, line by line, until it exits (RuntimeError) or the deadline."""
        assert self.proc is not None
        where = f"; see {self.log}" if self.log else ""
        if self.log_dir is None:
            out: IO[str] | None = self.proc.stdout
            assert out is not None
            while time.monotonic() < deadline:
                line = out.readline()
                if not line:
                    raise RuntimeError(f"{self.kind} exited with {self.proc.wait()} before serving{where}")
                yield line
        else:
            path, seen = self.log_dir / f"{self.name}.out", 0
            while time.monotonic() < deadline:
                text = path.read_text(errors="replace")
                lines = text[: text.rfind("\n") + 1].splitlines()  # complete lines only
                yield from lines[seen:]
                seen = len(lines)
                if (code := self.proc.poll()) is not None:
                    raise RuntimeError(f"{self.kind} exited with {code} before serving{where}")
                time.sleep(0.05)
        raise TimeoutError(f"{self.name}: {self.kind} not ready in time{where}")

    def _stop_proc(self, sig: int, timeout: float) -> int | None:
        if self.proc is None:
            return None
        code = stop(self.proc, sig, timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def __enter__(self) -> Any:
        return self if self.proc is not None else self.start()  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        self.stop()  # type: ignore[attr-defined]


class Gateway(_Process):
    """`recgen serve --models M --port 0 --state S EXTRA` on a kernel-chosen port.

    metrics=True adds --metrics-port 0 (then .url and .metrics()), else --no-metrics; host is passed
    as --host when given; cli_args go before `serve` (e.g. ("--log-level", "WARNING")).
    """

    kind = "serve"

    def __init__(
        self,
        models: Path | str,
        state: Path | str,
        *extra: str,
        name: str = "serve",
        host: str | None = None,
        metrics: bool = False,
        cli_args: Sequence[str] = (),
        log_dir: Path | None = None,
        root: Path = ROOT,
        environ: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
        wait_health: bool = True,
    ) -> None:
        argv = ["-m", "recgen.cli", *cli_args, "serve", "--models", str(models)]
        argv += ["--host", host] if host else []
        # Metrics are on by default on port 9464: a test or benchmark gateway takes a free port when
        # it wants them and turns them off otherwise, so gateways started side by side never collide.
        scrape_flags = ["--metrics-port", "0"] if metrics else ["--no-metrics"]
        argv += ["--port", "0", *scrape_flags, "--state", str(state), *extra]
        super().__init__(argv, name=name, log_dir=log_dir, root=root, environ=environ, prefix=prefix)
        self.models, self.state, self.extra = models, state, extra
        self.want_metrics, self.wait_health = metrics, wait_health
        self.target = self.url = ""
        self.port = 0

    def start(self, timeout: float = 300.0) -> Gateway:
        t0 = time.monotonic()
        deadline = t0 + timeout
        self._spawn()
        try:
            for line in self._lines(deadline):
                if line.startswith(METRICS_PREFIX):
                    self.url = line[len(METRICS_PREFIX) :].strip()
                elif line.startswith(SERVING_PREFIX):
                    host, port = line[len(SERVING_PREFIX) :].strip().rsplit(":", 1)
                    self.port = int(port)
                    self.target = f"{'127.0.0.1' if host in _WILDCARD_HOSTS else host}:{port}"
                    break
            if self.want_metrics and not self.url:
                raise RuntimeError(f"{self.name}: no metrics line before the serving line")
            if self.wait_health:
                assert self.proc is not None
                wait_healthy(self.target, self.proc, timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        self.started_s = time.monotonic() - t0
        return self

    def worker_pids(self) -> list[int]:
        return children(self.pid)

    def worker_addresses(self) -> list[tuple[int, str]]:
        """(pid, --listen address) of each worker process the gateway started."""
        out = []
        for pid in self.worker_pids():
            argv = cmdline(pid)
            if "worker" in argv and "--listen" in argv:
                out.append((pid, argv[argv.index("--listen") + 1]))
        return out

    def rss_mib(self) -> float:
        """Resident memory of the gateway and its workers together."""
        return sum(rss_kib(p) for p in [self.pid, *self.worker_pids()]) / 1024.0

    def metrics(self) -> dict[str, float]:
        assert self.url, "start the gateway with metrics=True"
        return scrape(self.url)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop the gateway (and so its workers); SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        workers = self.worker_pids() if self.proc.poll() is None else []
        code = self._stop_proc(sig, timeout)
        # Workers exit by themselves when the gateway is gone; wait for it, and make sure.
        t_end = time.monotonic() + 15.0
        while any(alive(w) for w in workers) and time.monotonic() < t_end:
            time.sleep(0.1)
        for w in workers:
            if alive(w):
                LOG.warning("%s: worker %d outlived its gateway: killing it", self.name, w)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w, signal.SIGCONT)
                    os.kill(w, signal.SIGKILL)
        return code


class Worker(_Process):
    """`recgen worker --models M --listen ADDR EXTRA` (ADDR: unix:PATH or HOST:PORT); ready when its
    health service says SERVING for recgen.worker.v1.Worker (or at once, with wait_health=False)."""

    kind = "worker"

    def __init__(
        self,
        models: Path | str,
        listen: str,
        *extra: str,
        name: str = "worker",
        log_dir: Path | None = None,
        root: Path = ROOT,
        environ: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
        wait_health: bool = True,
    ) -> None:
        argv = ["-m", "recgen.cli", "worker", "--models", str(models), "--listen", listen, *extra]
        super().__init__(argv, name=name, log_dir=log_dir, root=root, environ=environ, prefix=prefix)
        self.listen, self.wait_health = listen, wait_health

    @property
    def target(self) -> str:
        return self.listen if ":" in self.listen else f"unix:{self.listen}"

    def start(self, timeout: float = 300.0) -> Worker:
        t0 = time.monotonic()
        self._spawn()
        try:
            if self.wait_health:
                assert self.proc is not None
                wait_healthy(self.target, self.proc, WORKER_SERVICE, timeout)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        self.started_s = time.monotonic() - t0
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        return self._stop_proc(sig, timeout)
