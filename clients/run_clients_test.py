"""End-to-end test of the example clients in every language against a real server.

    make clients-test            # builds the stubs first (make stubs), then runs this
    .venv/bin/python clients/run_clients_test.py [--models models] [--langs go,cpp]
    .venv/bin/python clients/run_clients_test.py --target 127.0.0.1:50051   # a running server

Starts `recgen serve --models M --port 0 --state <tmp>/state.db --workers 1`
on loopback, waits for its "serving on" line and for gRPC health SERVING, runs
each built example client with `--target 127.0.0.1:PORT --user clients-test-<lang>`,
checks what it printed (ranked items with titles, the explain text and its
status, feedback stored=true, the streamed items, text and final status),
prints a table language -> PASS / FAIL / SKIPPED, stops the server with
SIGTERM and exits 1 if any language failed (or a --require'd one was skipped).
Every step is bounded by a timeout; the server's process group is killed if
it does not stop in time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "recgen.v1.Recommender"


@dataclass
class Lang:
    name: str
    tools: list[str]  # commands a build needs (for the SKIPPED reason)
    artifact: str  # what `make stubs-<name>` leaves behind, relative to ROOT
    cmd: list[str]  # how to run the example; "{py}" is replaced by --python
    env: dict[str, str] = field(default_factory=dict)


LANGS = [
    Lang("python", [], "recgen/v1/recommender_pb2_grpc.py", ["{py}", "clients/python/example.py"]),
    Lang(
        "node",
        ["node", "npm"],
        "clients/node/gen/dist/example.js",
        ["node", "clients/node/gen/dist/example.js"],
    ),
    Lang(
        "go",
        ["go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"],
        "clients/go/gen/bin/example",
        ["clients/go/gen/bin/example"],
    ),
    Lang(
        "cpp",
        ["protoc", "grpc_cpp_plugin", "g++", "pkg-config"],
        "clients/cpp/gen/bin/example",
        ["clients/cpp/gen/bin/example"],
    ),
    Lang(
        "java",
        ["protoc", "grpc_java_plugin", "javac", "java"],
        "clients/java/gen/example",
        ["clients/java/gen/example"],
    ),
    Lang(
        "ruby",
        ["protoc", "grpc_ruby_plugin", "ruby"],
        "clients/ruby/gen/recgen/v1/recommender_services_pb.rb",
        ["ruby", "clients/ruby/example.rb"],
    ),
]


# --- output checks ------------------------------------------------------------------

RE_HEAD = re.compile(r"^model \S+, request \S+$")
RE_ITEM = re.compile(r"^\s+(\d+)\. (.+) \[([^\]]+)\] score=-?\d+\.\d{3}$")
RE_TEXT = re.compile(r"^text \((TEXT_STATUS_[A-Z_]+)\): ?(.*)$")
RE_FEEDBACK = re.compile(r"^feedback CLICK (.+): stored=(true|false)$", re.IGNORECASE)
RE_STREAM = re.compile(r"^stream: (.*)$")
RE_FINAL = re.compile(r"^\[final: (TEXT_STATUS_[A-Z_]+)\]$")


def check_output(out: str) -> list[str]:
    """What is wrong with an example's stdout (empty when it is all there)."""
    problems: list[str] = []
    lines = out.splitlines()
    if not any(RE_HEAD.match(line) for line in lines):
        problems.append("no 'model V, request R' line")
    items = [m for m in map(RE_ITEM.match, lines) if m]
    if not items:
        problems.append("no ranked item lines ('  1. Title [id] score=0.123')")
    elif [int(m.group(1)) for m in items][:5] != list(range(1, min(len(items), 5) + 1)):
        problems.append("item ranks are not 1, 2, 3, ...")
    elif any(not m.group(2).strip() for m in items):
        problems.append("an item has an empty title")
    text = next((m for m in map(RE_TEXT.match, lines) if m), None)
    if text is None:
        problems.append("no 'text (TEXT_STATUS_...): ...' line")
    elif text.group(1) == "TEXT_STATUS_UNSPECIFIED":
        problems.append("explain was set but text_status is UNSPECIFIED")
    elif text.group(1) == "TEXT_STATUS_COMPLETE" and not text.group(2).strip():
        problems.append("text status COMPLETE but the text is empty")
    fb = next((m for m in map(RE_FEEDBACK.match, lines) if m), None)
    if fb is None:
        problems.append("no 'feedback CLICK ...: stored=...' line")
    elif fb.group(2).lower() != "true":
        problems.append("feedback was not stored (stored=false for a fresh event id)")
    if items and fb is not None and fb.group(1) != items[0].group(2):
        problems.append("feedback names another item than the first recommended one")
    i_stream = next((i for i, line in enumerate(lines) if RE_STREAM.match(line)), None)
    i_final = next((i for i, line in enumerate(lines) if RE_FINAL.match(line)), None)
    if i_stream is None:
        problems.append("no 'stream: ...' line (StreamRecommend items event)")
    elif not RE_STREAM.match(lines[i_stream]).group(1).strip():  # type: ignore[union-attr]
        problems.append("the stream's first event listed no items")
    if i_final is None:
        problems.append("no '[final: TEXT_STATUS_...]' line (StreamRecommend final event)")
    elif i_stream is not None:
        if i_final < i_stream:
            problems.append("the final event came before the items event")
        else:
            status = RE_FINAL.match(lines[i_final]).group(1)  # type: ignore[union-attr]
            streamed = "\n".join(lines[i_stream + 1 : i_final]).strip()
            if status == "TEXT_STATUS_COMPLETE" and not streamed:
                problems.append("stream final status COMPLETE but no text pieces were printed")
            if status == "TEXT_STATUS_UNSPECIFIED":
                problems.append("stream final status is UNSPECIFIED (explain is implied)")
    return problems


# --- the server ---------------------------------------------------------------------


class Server:
    """`recgen serve` on loopback port 0, in its own process group."""

    def __init__(self, recgen: str, models: str, workdir: Path, extra: list[str]) -> None:
        self.log_path = workdir / "server.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        cmd = [
            recgen,
            "serve",
            "--models",
            models,
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--state",
            str(workdir / "state.db"),
            "--workers",
            "1",
            *extra,
        ]
        print(f"clients-test: starting {' '.join(cmd)}", flush=True)
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.target: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # keeps draining after the ready line
            self._log.write("[stdout] " + line)
            self._log.flush()
            m = re.search(r"recgen: serving on (\S+):(\d+)", line)
            if m and self.target is None:
                self.target = f"{m.group(1)}:{m.group(2)}"
                self._ready.set()
        self._ready.set()  # stdout closed: the server died

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.5):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode} before serving")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not serving after {timeout:.0f} s")
        if self.target is None:
            raise RuntimeError(f"server closed its stdout before serving (exit code {self.proc.poll()})")
        wait_health(self.target, deadline - time.monotonic())
        return self.target

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"clients-test: server did not stop within {timeout:.0f} s; killing it", flush=True)
                kill_group(self.proc)
        kill_group(self.proc)  # workers left behind, if any
        self._log.close()
        return self.proc.returncode

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def wait_health(target: str, timeout: float) -> None:
    """Until grpc.health.v1 says SERVING for the Recommender service."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + max(timeout, 1.0)
    last = "no answer"
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
            except grpc.RpcError as e:
                last = f"{e.code().name}: {e.details()}"
            time.sleep(0.5)
    raise RuntimeError(f"health of {SERVICE} not SERVING after {timeout:.0f} s ({last})")


# --- the clients --------------------------------------------------------------------


@dataclass
class Result:
    lang: str
    status: str  # PASS, FAIL, SKIPPED
    detail: str = ""
    seconds: float | None = None
    output: str = ""


def run_client(lang: Lang, target: str, python: str, timeout: float) -> Result:
    cmd = [python if c == "{py}" else c for c in lang.cmd] + [
        "--target",
        target,
        "--user",
        f"clients-test-{lang.name}",
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,
        env={**os.environ, **lang.env},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        return Result(lang.name, "FAIL", f"timed out after {timeout:.0f} s", time.monotonic() - t0, out + err)
    dt = time.monotonic() - t0
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["(no stderr)"])[-1]
        return Result(lang.name, "FAIL", f"exit code {proc.returncode}: {last[:160]}", dt, out + err)
    problems = check_output(out)
    if problems:
        return Result(lang.name, "FAIL", "; ".join(problems), dt, out + err)
    return Result(lang.name, "PASS", "", dt, out)


def availability(lang: Lang, skip: dict[str, str], python: str) -> str | None:
    """None when the example is built; else why it is skipped ('' = not built although present)."""
    if lang.name in skip:
        return skip[lang.name]
    if (ROOT / lang.artifact).exists():
        return None
    if lang.name == "python":
        return "" if Path(python).exists() or shutil.which(python) else f"missing: {python}"
    missing = [t for t in lang.tools if shutil.which(t) is None]
    return f"missing: {' '.join(missing)}" if missing else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recgen", default=".venv/bin/recgen")
    ap.add_argument("--models", default="models")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the Python example")
    ap.add_argument("--langs", default=",".join(lang.name for lang in LANGS), help="comma-separated subset")
    ap.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="LANG:REASON",
        help="mark a language SKIPPED (make passes the ones whose toolchain is missing)",
    )
    ap.add_argument("--require", default="", help="comma-separated languages that must not be skipped (CI)")
    ap.add_argument("--target", help="use this running server instead of starting one")
    ap.add_argument("--startup-timeout", type=float, default=300.0, help="server start + health, seconds")
    ap.add_argument("--client-timeout", type=float, default=120.0, help="per example client, seconds")
    ap.add_argument("--server-arg", action="append", default=[], help="extra argument for recgen serve")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every client's output")
    args = ap.parse_args()

    wanted = [s.strip() for s in args.langs.replace(" ", ",").split(",") if s.strip()]
    unknown = set(wanted) - {lang.name for lang in LANGS}
    if unknown:
        ap.error(f"unknown language(s): {', '.join(sorted(unknown))}")
    required = {s.strip() for s in args.require.replace(" ", ",").split(",") if s.strip()}
    skip = {}
    for s in args.skip:
        name, _, reason = s.partition(":")
        skip[name.strip()] = reason.strip() or "skipped"

    results: dict[str, Result] = {}
    runnable: list[Lang] = []
    for lang in LANGS:
        if lang.name not in wanted:
            continue
        why = availability(lang, skip, args.python)
        if why is None:
            runnable.append(lang)
        elif why == "":
            results[lang.name] = Result(
                lang.name, "FAIL", f"toolchain present but not built (make stubs-{lang.name})"
            )
        else:
            results[lang.name] = Result(
                lang.name, "SKIPPED", f"toolchain {why}" if why.startswith("missing") else why
            )

    server: Server | None = None
    workdir = Path(tempfile.mkdtemp(prefix="recgen-clients-test-"))
    stopped_by: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopped_by.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    server_rc: int | None = None
    try:
        if runnable:
            target = args.target
            if target is None:
                t0 = time.monotonic()
                server = Server(args.recgen, args.models, workdir, args.server_arg)
                try:
                    target = server.wait_ready(args.startup_timeout)
                except RuntimeError as e:
                    print(f"clients-test: {e}", flush=True)
                    for lang in runnable:
                        results[lang.name] = Result(lang.name, "FAIL", "server did not start")
                    runnable = []
                else:
                    print(
                        f"clients-test: server ready on {target} after {time.monotonic() - t0:.1f} s",
                        flush=True,
                    )
            for lang in runnable:
                print(f"clients-test: {lang.name} ...", flush=True)
                r = run_client(lang, target, args.python, args.client_timeout)
                results[lang.name] = r
                if args.verbose or r.status != "PASS":
                    print("\n".join("    | " + line for line in r.output.rstrip().splitlines()), flush=True)
    except KeyboardInterrupt:
        print("clients-test: interrupted", flush=True)
        for lang in runnable:
            results.setdefault(lang.name, Result(lang.name, "FAIL", "interrupted"))
    finally:
        if server is not None:
            server_rc = server.stop()
            if any(r.status == "FAIL" for r in results.values()):
                print(f"--- server log (tail) ---\n{server.log_tail()}", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)

    for name in required:
        skipped = results.get(name)
        if skipped is not None and skipped.status == "SKIPPED":
            results[name] = Result(name, "FAIL", f"required but skipped ({skipped.detail})")

    print()
    print(f"{'language':<9} {'result':<8} {'time':>7}  detail")
    for lang in LANGS:
        row = results.get(lang.name)
        if row is None:
            continue
        secs = f"{row.seconds:.1f}s" if row.seconds is not None else "-"
        print(f"{row.lang:<9} {row.status:<8} {secs:>7}  {row.detail}")
    if server is not None:
        print(f"server stopped with SIGTERM, exit code {server_rc}")
    failed = [r.lang for r in results.values() if r.status == "FAIL"]
    if stopped_by:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
