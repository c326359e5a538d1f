"""The rank path's cost: CPU-µs per Recommend in each process, against the empty server, in one run.

    python -m tools.bench.rank_cost --models M [--seconds 6] [--rounds 3] [--concurrency 8]
        [--profile DIR] [--prefix before] [--json OUT] [--variant NAME[=TREE][,FLAG...] ...]

Starts tools.echo_server and one `recgen serve` per variant (2 local workers, fresh state store),
all kept up for the whole run, and runs closed loops of Recommend(k=10, explain=false) at a fixed
concurrency against each of: the echo server, recgen with cold users (ids no model version holds,
no feedback), recgen with users with history (training users the version holds, plus 5 live RATE
events each), recgen at one caller (its p50), and — when the server answers it — RecommendBatch of
64 users per call. For each it reads the CPU time of every server process from /proc before and
after (tools/harness/procfs.py), takes out the idle burn measured just before, and divides by the
calls answered.

The loads run in `--rounds` rounds: each round measures the echo server, then every variant (in
an order turned by one each round); each ratio is taken within its round, against that round's
echo figures. On a shared machine two runs minutes apart differ by 15-30%; a round's two sides
see the same load, so the median over rounds of the per-round ratios (`variants.NAME.ratios`) is
what the goals read. The per-load figures (`cold`, `history`, `p50_ms_one_caller`, `batch64`,
`echo`) are medians over rounds; every round is kept (`variants.NAME.rounds`, `echo_runs`).
With --profile it then records py-spy flame graphs (SVG) of the gateway and of one worker of the
last variant under the users-with-history load (after the rounds: py-spy's sampling costs CPU too).

What it does not do: sweep concurrencies or open loops (tools/bench/server_phase.py does), or judge
goals (tools/bench/summary.py does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import statistics
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
SECONDS = 6.0  # each closed loop (the one-caller loads: half); 3 rounds of 6 s: ~2x one pass of 8 s
ROUNDS = 3
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
    seconds: float = SECONDS,
    warmup: float = 1.0,
    concurrency: int = 8,
    profile: Path | None = None,
    prefix: str = "before",
    variants: Sequence[Variant] = (Variant("recgen"),),
    work: Path | None = None,
    idle_s: float = IDLE_S,
    history_users: int = HISTORY_USERS,
    rounds: int = ROUNDS,
) -> dict[str, Any]:
    """Every variant against the echo server, in `rounds` interleaved rounds (see the module doc);
    idle_s, history_users and rounds=1: `make bench --smoke`, which checks that every number is
    computed, not what it is."""
    from recgen.core.user_history import USERS_DIR, UserHistories
    from recgen.repository import ModelRepository

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    mv = ModelRepository(models).open(None, verify=False)
    items = [it.item_id for it in mv.catalog()]
    if UserHistories.exists(mv.path):  # training users: the version holds their histories
        ids = list(UserHistories(mv.path / USERS_DIR, n_items=len(items)).ids)[:history_users]
        trained = [u.decode() if isinstance(u, bytes) else str(u) for u in ids]
    else:  # an older version: users with live history only
        trained = [f"hist-{i}" for i in range(history_users)]
    cold = [f"cold-{i}" for i in range(history_users)]
    work = work or Path(tempfile.mkdtemp(prefix="rank-cost-"))
    load = _Load(cold, trained, concurrency, seconds, warmup, idle_s)
    echo_runs: list[dict[str, float]] = []
    per_round: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    order: list[list[str]] = []
    with running_echo() as echo_target, contextlib.ExitStack() as stack:
        servers: dict[str, _Up] = {}
        for v in variants:  # all up before the first round, and kept up: no start inside the rounds
            srv = stack.enter_context(_server(v, models, work).start(timeout=600.0))
            asyncio.run(_seed(srv.target, trained, items))
            servers[v.name] = _Up(srv, _pids(srv), asyncio.run(_has_batch_rpc(srv.target)))
        echo_pids = {"echo": _listener_pid(echo_target)}
        for r in range(rounds):
            echo = _echo(echo_target, echo_pids, load)
            echo_runs.append(echo)
            order.append([v.name for v in rotated(variants, r)])
            for v in rotated(variants, r):
                res = _variant_round(servers[v.name], load)
                res["ratios"] = round_ratios(res, echo)
                per_round[v.name].append(res)
                LOG.info("round %d %s: %s", r + 1, v.name, res["ratios"])
        if profile is not None:
            _profile(servers[variants[-1].name], trained, concurrency, seconds, profile, prefix)
    out: dict[str, Any] = {
        "concurrency": concurrency,
        "seconds": seconds,
        "rounds": rounds,
        "order": order,
        "echo_runs": echo_runs,
        "echo": {k: _median([e[k] for e in echo_runs]) for k in echo_runs[0]},
        "variants": {},
    }
    for v in variants:
        out["variants"][v.name] = {
            "root": str(v.root),
            "serve_args": list(v.serve_args),
            **aggregate(per_round[v.name]),
        }
    return out


def rotated(variants: Sequence[Variant], r: int) -> list[Variant]:
    """Round r's order: the variants turned by r, so none is always measured first after the echo."""
    k = r % len(variants)
    return [*variants[k:], *variants[:k]]


def round_ratios(res: dict[str, Any], echo: dict[str, float]) -> dict[str, float | None]:
    """One round's ratios, each against the figures of the echo server in the same round (what the
    goals compare; the machine's load moves both sides of a round alike)."""

    def ratio(a: Any, b: Any) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    batch = (res.get("batch64") or {}).get("answers_per_s")
    return {
        "cold_cpu_vs_echo": ratio(res["cold"]["cpu_us_per_answer_total"], echo["cpu_us_per_answer_total"]),
        "history_cpu_vs_echo": ratio(
            res["history"]["cpu_us_per_answer_total"], echo["cpu_us_per_answer_total"]
        ),
        "cold_rate_vs_echo": ratio(res["cold"]["answers_per_s"], echo["answers_per_s"]),
        "history_rate_vs_echo": ratio(res["history"]["answers_per_s"], echo["answers_per_s"]),
        "p50_vs_2x_echo_plus_1ms": ratio(res["p50_ms_one_caller"], 2.0 * echo["p50_ms_one_caller"] + 1.0),
        "batch64_vs_history_rate": ratio(batch, res["history"]["answers_per_s"]),
        "batch64_vs_echo_batch64": ratio(batch, echo["batch64_answers_per_s"]),
    }


def aggregate(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A variant's figures over its rounds: each figure's median, each per-round ratio's median
    (`ratios`), the older per-load ratio keys (from those medians) and every round as measured."""
    ratios = {k: _median([r["ratios"][k] for r in rounds]) for k in rounds[0]["ratios"]}
    res: dict[str, Any] = {
        "cold": {
            **_median_load([r["cold"] for r in rounds]),
            "ratio_cpu_vs_echo": ratios["cold_cpu_vs_echo"],
            "ratio_rate_vs_echo": ratios["cold_rate_vs_echo"],
        },
        "history": {
            **_median_load([r["history"] for r in rounds]),
            "ratio_cpu_vs_echo": ratios["history_cpu_vs_echo"],
            "ratio_rate_vs_echo": ratios["history_rate_vs_echo"],
        },
        "p50_ms_one_caller": _median([r["p50_ms_one_caller"] for r in rounds]),
        "ratios": ratios,
        "rounds": rounds,
    }
    if all("batch64" in r for r in rounds):
        res["batch64"] = _median_load([r["batch64"] for r in rounds])
    return res


def _median(xs: Sequence[Any]) -> Any:
    """The median of the numbers in xs (None where there is none); NaN and None are left out."""
    vals = [float(x) for x in xs if x is not None and not math.isnan(float(x))]
    return round(statistics.median(vals), 3) if vals else None


def _median_load(loads: list[dict[str, Any]]) -> dict[str, Any]:
    """Each number's median over the loads; a dict of numbers (per process), each key's median."""
    out: dict[str, Any] = {}
    for k, v in loads[0].items():
        if isinstance(v, dict):
            out[k] = {p: _median([x[k][p] for x in loads]) for p in v}
        else:
            out[k] = _median([x[k] for x in loads])
    return out


@dataclass(frozen=True)
class _Load:
    """What every load of a run shares: its users, callers and lengths."""

    cold: list[str]
    trained: list[str]
    concurrency: int
    seconds: float
    warmup: float
    idle_s: float


@dataclass(frozen=True)
class _Up:
    """A variant's server, started once for all rounds."""

    srv: Gateway
    pids: dict[str, int]
    has_batch: bool


def _echo(target: str, pids: dict[str, int], ld: _Load) -> dict[str, float]:
    """One round of the echo server: its closed loop, its p50 at one caller, its RecommendBatch(64)."""
    r = asyncio.run(_measure(target, pids, ld.cold, ld.concurrency, ld.seconds, ld.warmup, idle_s=ld.idle_s))
    one = asyncio.run(_measure(target, pids, ld.cold, 1, ld.seconds / 2, ld.warmup, idle_s=ld.idle_s))
    batch = asyncio.run(
        _measure(
            target, pids, ld.trained, max(1, ld.concurrency // 4), ld.seconds / 2, ld.warmup, BATCH, ld.idle_s
        )
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


def _variant_round(up: _Up, ld: _Load) -> dict[str, Any]:
    """One round of one variant's server: cold, history, p50 at one caller, RecommendBatch(64)."""
    target, pids = up.srv.target, up.pids
    res: dict[str, Any] = {}
    for name, users in (("cold", ld.cold), ("history", ld.trained)):
        res[name] = asyncio.run(
            _measure(target, pids, users, ld.concurrency, ld.seconds, ld.warmup, idle_s=ld.idle_s)
        )
    res["p50_ms_one_caller"] = asyncio.run(
        _measure(target, pids, ld.trained, 1, ld.seconds / 2, ld.warmup, idle_s=ld.idle_s)
    )["p50_ms"]
    if up.has_batch:
        res["batch64"] = asyncio.run(
            _measure(
                target, pids, ld.trained, max(1, ld.concurrency // 4), ld.seconds, ld.warmup, BATCH, ld.idle_s
            )
        )
    return res


def _profile(
    up: _Up, trained: list[str], concurrency: int, seconds: float, profile: Path, prefix: str
) -> None:
    """py-spy flame graphs of the gateway and one worker under the users-with-history load, after
    the rounds (py-spy's sampling costs CPU too), on the last variant's server still up."""
    profile.mkdir(parents=True, exist_ok=True)
    srv, pids = up.srv, up.pids
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
        rounds=plan.rank_rounds,
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


RATIO_COLUMNS = (
    ("cold_cpu_vs_echo", "cold CPU vs echo"),
    ("history_cpu_vs_echo", "history CPU vs echo"),
    ("history_rate_vs_echo", "history calls/s vs echo"),
    ("p50_vs_2x_echo_plus_1ms", "p50 @1 vs 2 x echo + 1 ms"),
    ("batch64_vs_history_rate", "batch64 users/s vs history calls/s"),
)


def ratio_table(doc: dict[str, Any]) -> str:
    """Markdown: each variant's per-round ratios as median (lowest-highest over the rounds)."""
    lines = [
        f"| variant (rounds: {doc.get('rounds', 1)}) | "
        + " | ".join(label for _, label in RATIO_COLUMNS)
        + " |",
        "|---|" + "---:|" * len(RATIO_COLUMNS),
    ]
    for name, v in doc["variants"].items():
        cells = []
        for key, _ in RATIO_COLUMNS:
            per = [r["ratios"][key] for r in v.get("rounds", []) if r["ratios"].get(key) is not None]
            med = (v.get("ratios") or {}).get(key)
            cells.append(
                "-"
                if med is None
                else f"{med:.2f}x ({min(per):.2f}-{max(per):.2f})"
                if per
                else f"{med:.2f}x"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_variant(text: str) -> Variant:
    head, *flags = text.split(",")
    name, _, root = head.partition("=")
    return Variant(name, Path(root) if root else ROOT, tuple(flags))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.rank_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="models")
    p.add_argument("--seconds", type=float, default=SECONDS, help="each closed loop (one caller: half)")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds; figures are their medians")
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
        rounds=a.rounds,
        concurrency=a.concurrency,
        profile=a.profile,
        prefix=a.prefix,
        variants=[parse_variant(x) for x in a.variant] or [Variant("recgen")],
    )
    text = json.dumps(res, indent=2)
    print(text)
    print(stage_table(res))
    print()
    print(ratio_table(res))
    if a.json:
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
