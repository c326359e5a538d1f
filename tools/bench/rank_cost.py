"""The rank path's cost: CPU-µs per Recommend in each process, against the empty server, in one run.

    python -m tools.bench.rank_cost --models M [--seconds 8] [--concurrency 8] [--profile DIR]
        [--prefix before] [--json OUT] [--serve-arg=--rank-batch=0 ...]

Starts tools.echo_server and one `recgen serve` (2 local workers, fresh state store), then runs a
closed loop of Recommend(k=10, explain=false) at a fixed concurrency against each of: the echo
server, recgen with cold users (ids no model version holds, no feedback), recgen with users with
history (training users the version holds, plus 5 live RATE events each), and — when the server
answers it — RecommendBatch of 64 users per call. For each it reads the CPU time of every server
process from /proc before and after (tools/harness/procfs.py) and divides by the calls answered.
With --profile it then records py-spy flame graphs (SVG) of the gateway and of one worker under the
users-with-history load (a separate run: py-spy's sampling costs CPU too).

What it does not do: sweep concurrencies or open loops (tools/bench/server_phase.py does), or judge
goals (tools/bench/rank_goals.py does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tools.bench.plan import Plan
from tools.echo_server import running_echo
from tools.harness.procfs import cpu_s
from tools.harness.procs import ROOT, Gateway

LOG = logging.getLogger("bench.rank_cost")

HISTORY_USERS = 200
LIVE_EVENTS = 5
BATCH = 64  # users per RecommendBatch call
IDLE_S = 2.0  # seconds of idle CPU measured before each load
PY_SPY = ROOT / ".venv" / "bin" / "py-spy"


async def _closed_loop(
    call: Callable[[int], Awaitable[int]], concurrency: int, seconds: float, warmup: float
) -> tuple[int, float, list[float]]:
    """(answers counted, seconds measured, per-call latencies in ms) of `concurrency` callers in a
    loop; call(i) returns how many answers (users) the call carried. Errors raise."""
    stop_at = time.perf_counter() + warmup + seconds
    t_start = time.perf_counter() + warmup
    counted = 0
    lat: list[float] = []

    async def one(c: int) -> None:
        nonlocal counted
        i = c
        while (now := time.perf_counter()) < stop_at:
            n = await call(i)
            done = time.perf_counter()
            if now >= t_start:
                counted += n
                lat.append((done - now) * 1e3)
            i += concurrency

    await asyncio.gather(*(one(c) for c in range(concurrency)))
    return counted, seconds, lat


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3)


async def _measure(
    target: str,
    pids: dict[str, int],
    users: Sequence[str],
    concurrency: int,
    seconds: float,
    warmup: float,
    batch: int = 0,
    idle_s: float = IDLE_S,
) -> dict[str, Any]:
    """One closed loop against `target`: calls/s, latency and CPU-µs per answer of every pid."""
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pbg.RecommenderStub(ch)

        async def single(i: int) -> int:
            await stub.Recommend(pb.RecommendRequest(user_id=users[i % len(users)], k=10), timeout=10)
            return 1

        async def many(i: int) -> int:
            base = i * batch
            reqs = [pb.RecommendRequest(user_id=users[(base + j) % len(users)], k=10) for j in range(batch)]
            reply = await stub.RecommendBatch(pb.RecommendBatchRequest(requests=reqs), timeout=10)
            bad = [r for r in reply.results if r.code]
            if bad:
                raise RuntimeError(f"RecommendBatch: {len(bad)} users failed, e.g. {bad[0].message}")
            return len(reply.results)

        call = many if batch else single
        await _closed_loop(call, concurrency, 0.5, 0.0)  # connect, warm caches
        # What the processes burn with no calls (pollers, health checks, the catalog poll) is not
        # a cost per call: measured idle first and taken out, so a slower run is not charged more.
        i0, t_idle = {k: cpu_s(p) for k, p in pids.items()}, time.perf_counter()
        await asyncio.sleep(idle_s)
        idle = {k: (cpu_s(p) - i0[k]) / (time.perf_counter() - t_idle) for k, p in pids.items()}
        c0 = {k: cpu_s(p) for k, p in pids.items()}
        n, secs, lat = await _closed_loop(call, concurrency, seconds, warmup)
        c1 = {k: cpu_s(p) for k, p in pids.items()}
    # Warm-up answers cost CPU too: count them at the measured rate.
    total = n * (seconds + warmup) / seconds
    span = seconds + warmup
    cpu_us = {k: round(1e6 * max(0.0, c1[k] - c0[k] - idle[k] * span) / max(total, 1.0), 1) for k in pids}
    return {
        "answers_per_s": round(n / secs, 1),
        "calls": len(lat),
        "p50_ms": _pct(lat, 0.5),
        "p99_ms": _pct(lat, 0.99),
        "cpu_us_per_answer": cpu_us,
        "cpu_us_per_answer_total": round(sum(cpu_us.values()), 1),
        "idle_cpu_share": {k: round(v, 4) for k, v in idle.items()},
    }


async def _seed(target: str, users: Sequence[str], items: Sequence[str]) -> None:
    """LIVE_EVENTS RATE events per user through SendFeedback, so the gateway passes history too."""
    now = time.time()
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pbg.RecommenderStub(ch)
        for n, u in enumerate(users):
            await asyncio.gather(
                *(
                    stub.SendFeedback(
                        pb.SendFeedbackRequest(
                            event_id=f"cost-{u}-{k}",
                            user_id=u,
                            item_id=items[(n * 7 + k * 13) % len(items)],
                            type=pb.FEEDBACK_TYPE_RATE,
                            value=4.0,
                            timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60 * (k + 1))),
                        ),
                        timeout=30,
                    )
                    for k in range(LIVE_EVENTS)
                )
            )


async def _has_batch_rpc(target: str) -> bool:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pbg.RecommenderStub(ch)
        if not hasattr(stub, "RecommendBatch"):
            return False
        try:
            await stub.RecommendBatch(pb.RecommendBatchRequest(), timeout=5)
        except grpc.aio.AioRpcError as e:
            return e.code() != grpc.StatusCode.UNIMPLEMENTED
        return True


@contextlib.contextmanager
def _py_spy(pid: int, out: Path, seconds: float) -> Any:
    """py-spy record of one process for `seconds` (SVG flame graph), running while the block runs."""
    cmd = [str(PY_SPY), "record", "-p", str(pid), "-o", str(out), "-d", str(int(seconds)), "-r", "200"]
    proc = subprocess.Popen([*cmd, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        try:
            _, err = proc.communicate(timeout=seconds + 30)
            if proc.returncode:
                LOG.warning("py-spy on %d failed: %s", pid, err.decode(errors="replace")[-400:])
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass(frozen=True)
class Variant:
    """One server to measure: a source tree (another checkout for an A/B) and extra serve flags."""

    name: str
    root: Path = ROOT
    serve_args: tuple[str, ...] = ()


def run(
    models: str,
    *,
    seconds: float = 8.0,
    warmup: float = 1.0,
    concurrency: int = 8,
    profile: Path | None = None,
    prefix: str = "before",
    variants: Sequence[Variant] = (Variant("recgen"),),
    work: Path | None = None,
    idle_s: float = IDLE_S,
    history_users: int = HISTORY_USERS,
    echo_after: bool = True,
) -> dict[str, Any]:
    """Every variant, and the echo server before and after them (their mean is the baseline).
    idle_s, history_users, echo_after=False (echo before only): `make bench --smoke`, which checks
    that every number is computed, not what it is."""
    from recgen.core.user_history import USERS_DIR, UserHistories
    from recgen.repository import ModelRepository

    mv = ModelRepository(models).open(None, verify=False)
    items = [it.item_id for it in mv.catalog()]
    if UserHistories.exists(mv.path):  # training users: the version holds their histories
        ids = list(UserHistories(mv.path / USERS_DIR, n_items=len(items)).ids)[:history_users]
        trained = [u.decode() if isinstance(u, bytes) else str(u) for u in ids]
    else:  # an older version: users with live history only
        trained = [f"hist-{i}" for i in range(history_users)]
    cold = [f"cold-{i}" for i in range(history_users)]
    work = work or Path(tempfile.mkdtemp(prefix="rank-cost-"))
    out: dict[str, Any] = {"concurrency": concurrency, "seconds": seconds, "variants": {}}
    with running_echo() as echo_target:
        echo = _echo(echo_target, cold, trained, concurrency, seconds, warmup, idle_s)
        for v in variants:
            res = _variant(v, models, work, items, cold, trained, concurrency, seconds, warmup, idle_s)
            out["variants"][v.name] = res
            if profile is not None and v is variants[-1]:
                _profile(v, models, work, trained, concurrency, seconds, profile, prefix)
        runs = [echo]
        if echo_after:
            runs.append(_echo(echo_target, cold, trained, concurrency, seconds, warmup, idle_s))
    out["echo_runs"] = runs
    out["echo"] = {
        k: round(sum(r[k] for r in runs) / len(runs), 3)
        for k in ("answers_per_s", "cpu_us_per_answer_total", "p50_ms_one_caller", "batch64_answers_per_s")
    }
    for res in out["variants"].values():
        for name in ("cold", "history"):
            res[name]["ratio_cpu_vs_echo"] = round(
                res[name]["cpu_us_per_answer_total"] / max(out["echo"]["cpu_us_per_answer_total"], 1e-9), 2
            )
            res[name]["ratio_rate_vs_echo"] = round(
                res[name]["answers_per_s"] / max(out["echo"]["answers_per_s"], 1e-9), 3
            )
    return out


def _echo(
    target: str,
    cold: list[str],
    trained: list[str],
    concurrency: int,
    seconds: float,
    warmup: float,
    idle_s: float = IDLE_S,
) -> dict[str, float]:
    pids = {"echo": _listener_pid(target)}
    r = asyncio.run(_measure(target, pids, cold, concurrency, seconds, warmup, idle_s=idle_s))
    one = asyncio.run(_measure(target, pids, cold, 1, seconds / 2, warmup, idle_s=idle_s))
    batch = asyncio.run(
        _measure(target, pids, trained, max(1, concurrency // 4), seconds / 2, warmup, BATCH, idle_s)
    )
    LOG.info("echo: %s; one caller p50 %s ms; batch64 %s users/s", r, one["p50_ms"], batch["answers_per_s"])
    return {
        "answers_per_s": r["answers_per_s"],
        "cpu_us_per_answer_total": r["cpu_us_per_answer_total"],
        "p50_ms_one_caller": one["p50_ms"],
        "batch64_answers_per_s": batch["answers_per_s"],
        "batch64_cpu_us_per_user": batch["cpu_us_per_answer_total"],
    }


def _server(v: Variant, models: str, work: Path) -> Gateway:
    d = work / v.name
    d.mkdir(parents=True, exist_ok=True)
    # Metrics on (a free port) in every variant: an older tree has no --no-metrics flag.
    return Gateway(
        models,
        d / "state.db",
        *v.serve_args,
        cli_args=("--log-level", "WARNING"),
        log_dir=d,
        root=v.root,
        metrics=True,
    )


def _pids(srv: Gateway) -> dict[str, int]:
    return {"gateway": srv.pid, **{f"worker{i}": p for i, (p, _) in enumerate(srv.worker_addresses())}}


def _variant(
    v: Variant,
    models: str,
    work: Path,
    items: list[str],
    cold: list[str],
    trained: list[str],
    concurrency: int,
    seconds: float,
    warmup: float,
    idle_s: float = IDLE_S,
) -> dict[str, Any]:
    res: dict[str, Any] = {"root": str(v.root), "serve_args": list(v.serve_args)}
    with _server(v, models, work).start(timeout=600.0) as srv:
        pids = _pids(srv)
        asyncio.run(_seed(srv.target, trained, items))
        for name, users in (("cold", cold), ("history", trained)):
            res[name] = asyncio.run(
                _measure(srv.target, pids, users, concurrency, seconds, warmup, idle_s=idle_s)
            )
            LOG.info("%s %s: %s", v.name, name, res[name])
        res["p50_ms_one_caller"] = asyncio.run(
            _measure(srv.target, pids, trained, 1, seconds / 2, warmup, idle_s=idle_s)
        )["p50_ms"]
        if asyncio.run(_has_batch_rpc(srv.target)):
            res["batch64"] = asyncio.run(
                _measure(srv.target, pids, trained, max(1, concurrency // 4), seconds, warmup, BATCH, idle_s)
            )
            LOG.info("%s batch64: %s", v.name, res["batch64"])
    return res


def _profile(
    v: Variant,
    models: str,
    work: Path,
    trained: list[str],
    concurrency: int,
    seconds: float,
    profile: Path,
    prefix: str,
) -> None:
    """py-spy flame graphs of the gateway and one worker under the users-with-history load."""
    profile.mkdir(parents=True, exist_ok=True)
    with _server(Variant(v.name + "-profile", v.root, v.serve_args), models, work).start(
        timeout=600.0
    ) as srv:
        pids = _pids(srv)
        span = seconds + 2
        with (
            _py_spy(srv.pid, profile / f"{prefix}_gateway.svg", span),
            _py_spy(pids.get("worker0", srv.pid), profile / f"{prefix}_worker.svg", span),
        ):
            time.sleep(1.0)  # py-spy attaches
            asyncio.run(_measure(srv.target, pids, trained, concurrency, seconds, 0.0))


def _listener_pid(target: str) -> int:
    """The pid listening on target's port (the echo server runs under `running_echo`'s Popen)."""
    port = int(target.rsplit(":", 1)[1])
    for line in subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout.splitlines():
        if f":{port} " in line and "pid=" in line:
            return int(line.split("pid=", 1)[1].split(",", 1)[0])
    raise RuntimeError(f"no process listens on {target}")


def phase_rank(plan: Plan, models: str, work: Path) -> dict[str, Any]:
    """`make bench`'s rank phase: this tree against the echo server, at the plan's sizes."""
    return run(
        models,
        seconds=plan.rank_seconds,
        warmup=plan.rank_warmup,
        work=work / "rank",
        idle_s=plan.rank_idle_s,
        history_users=plan.rank_users,
        echo_after=not plan.smoke,
    )


def stage_table(doc: dict[str, Any]) -> str:
    """Markdown: CPU-µs per Recommend in each process vs the empty server's per call, per variant."""
    echo = doc["echo"]["cpu_us_per_answer_total"]
    lines = [
        f"| variant | users | calls/s @{doc['concurrency']} | gateway CPU-µs | workers CPU-µs | total "
        f"| vs empty server ({echo:.0f} µs) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, v in doc["variants"].items():
        for kind in ("cold", "history"):
            r = v[kind]
            cpu = r["cpu_us_per_answer"]
            workers = sum(x for k, x in cpu.items() if k.startswith("worker"))
            lines.append(
                f"| {name} | {kind} | {r['answers_per_s']:,.0f} | {cpu.get('gateway', 0):,.0f} | "
                f"{workers:,.0f} | {r['cpu_us_per_answer_total']:,.0f} | {r['ratio_cpu_vs_echo']:.2f}x |"
            )
    return "\n".join(lines)


def parse_variant(text: str) -> Variant:
    head, *flags = text.split(",")
    name, _, root = head.partition("=")
    return Variant(name, Path(root) if root else ROOT, tuple(flags))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.rank_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="models")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--profile", type=Path, default=None, help="write py-spy SVGs here")
    p.add_argument("--prefix", default="before", help="SVG names: PREFIX_gateway.svg, PREFIX_worker.svg")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME[=ROOT][,FLAG...]",
        help="a server to measure: a name, its source tree (default: this one) and extra `recgen serve` "
        "flags, e.g. before=/tmp/base or nobatch,--rank-batch=0 (repeat; default: this tree)",
    )
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    res = run(
        a.models,
        seconds=a.seconds,
        concurrency=a.concurrency,
        profile=a.profile,
        prefix=a.prefix,
        variants=[parse_variant(x) for x in a.variant] or [Variant("recgen")],
    )
    text = json.dumps(res, indent=2)
    print(text)
    print(stage_table(res))
    if a.json:
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
