"""`python -m tools.soak --minutes 30 --models models --out var/soak` (`make soak`).

Starts a real `recgen serve` (SQLite state in a private directory, 2 local workers) on a private
copy of the model repository, runs the mixed load of traffic.py for the given time, hot-swaps the
model version at 40% of the run (or at each --swap-at) and SIGKILLs one worker at 30%, samples
the processes every few seconds, then writes OUT/soak.json and OUT/soak.png and prints the
verdict. Exit status: 0 when every goal of verdict.py holds, 1 when one fails, 2 when the run
itself could not be done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from recgen.repository import ModelRepository
from tools.harness.procs import Gateway
from tools.soak import faults, plot, verdict
from tools.soak.sampler import Sampler
from tools.soak.traffic import Mix, Traffic

LOG = logging.getLogger("tools.soak")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="length of the load (default: 30)")
    p.add_argument("--models", type=Path, default=Path("models"), help="model repository (copied)")
    p.add_argument("--out", type=Path, default=Path("var/soak"), help="where soak.json and soak.png go")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--interval", type=float, default=None, help="seconds between samples (default: run/180, 2..10)"
    )
    p.add_argument(
        "--warmup", type=float, default=None, help="seconds not judged at the start (default: 10%%)"
    )
    m = Mix()
    for kind, rate in m.rates().items():
        p.add_argument(
            f"--{kind}-rate", type=float, default=rate, help=f"{kind} calls per second (default: {rate})"
        )
    p.add_argument(
        "--kill-at", type=float, default=0.3, help="worker SIGKILL, fraction of the run (<0: none)"
    )
    p.add_argument(
        "--swap-at",
        type=float,
        nargs="+",
        default=[0.4],
        help="hot swap(s), fractions of the run, e.g. 0.2 0.4 0.6 (<0: none)",
    )
    p.add_argument("--wal-bound-mib", type=float, default=verdict.Goals(1, 0).wal_bound_mib)
    p.add_argument(
        "--server-log-level", default="WARNING", help="the gateway's --log-level (default: WARNING)"
    )
    p.add_argument("--keep", action="store_true", help="keep the private models/state/log directory")
    return p.parse_args(argv)


async def drive(
    gw: Gateway, root: Path, state: Path, a: argparse.Namespace, duration: float
) -> dict[str, Any]:
    """The load, the sampling and the two events, all on one clock (seconds since t0)."""
    interval = a.interval or min(10.0, max(2.0, duration / 180.0))
    sampler = Sampler(gw.pid, state)
    repo = ModelRepository(root)
    items = [i.item_id for i in repo.open(repo.serving(), verify=False).catalog()]
    users_path = root / repo.serving() / "users" / "ids.npy"
    known = [b.decode() for b in np.load(users_path)[:500]] if users_path.is_file() else []
    mix = Mix(**{k: getattr(a, f"{k}_rate") for k in Mix().rates()})
    t0 = time.perf_counter()
    traffic = Traffic(gw.target, mix, items=items, known_users=known, run_id=str(int(time.time())), t0=t0)
    events: dict[str, Any] = {}

    def now() -> float:
        return time.perf_counter() - t0

    async def at(frac: float) -> bool:
        if frac < 0:
            return False
        await asyncio.sleep(max(0.0, frac * duration - now()))
        return True

    async def kill() -> None:
        if await at(a.kill_at):
            events["kill"] = await faults.kill_worker(gw, now())
            LOG.info("worker kill: %s", events["kill"])

    async def swap() -> None:
        for frac in sorted(a.swap_at):
            if await at(frac):
                info = await faults.hot_swap(root, now())
                events.setdefault("swap", info)  # the first; all of them under "swaps"
                events.setdefault("swaps", []).append(info)
                LOG.info("hot swap: %s", info)

    async def sample() -> None:
        while (t := now()) < duration:
            sampler.take(t)
            await asyncio.sleep(max(0.0, interval - (now() - t)))

    load = asyncio.create_task(traffic.run(duration))
    await asyncio.gather(kill(), swap(), sample(), load)
    sampler.take(now())  # after the last call ended
    return {
        "interval_s": interval,
        "samples": sampler.samples,
        "outcomes": [o.row() for o in traffic.outcomes],
        "events": events,
        "mix": mix.rates(),
    }


def summary(report: dict[str, Any]) -> str:
    v = report["verdict"]
    ok = {True: "PASS", False: "FAIL"}
    lines = [f"soak: {report['title']}"]
    for pid, e in v["memory"]["processes"].items():
        if e["judged"]:
            lines.append(
                f"  memory {e['role']:7} {pid:>7}: {e['rss_at_fit_start_mib']:8.1f} MiB, "
                f"growth {e['growth_pct']:+6.2f}% over the 2nd half  {ok[e['passed']]}"
            )
        else:
            lines.append(f"  memory {e['role']:7} {pid:>7}: not judged (not up for the whole 2nd half)")
    lines.append(f"memory growth < {v['memory']['limit_pct']}%: {ok[v['memory']['passed']]}")
    w = v["wal"]
    lines.append(f"WAL max {w['max_wal_mib']} MiB <= {w['bound_mib']} MiB: {ok[w['passed']]}")
    fd = [
        f"{e['role']} {e['fds_start']:g}->{e['fds_end']:g}"
        for e in v["fds"]["processes"].values()
        if e["judged"]
    ]
    lines.append(f"fds ({', '.join(fd)}): {ok[v['fds']['passed']]}")
    p = v["p99"]
    first, last = (p["first"] or {}).get("p99"), (p["last"] or {}).get("p99")
    lines.append(
        f"{p['kind']} p99 {first} ms -> {last} ms (x{p['ratio']}) <= x{p['limit_ratio']}: {ok[p['passed']]}"
    )
    lines.append(f"calls by kind and status: {json.dumps(report['status_counts'])}")
    lines.append(f"verdict: {ok[v['pass']]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = parse(argv)
    # SIGTERM (a CI timeout, `kill`) ends the run through the finally below: no orphaned gateway.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    duration = a.minutes * 60.0
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))  # short: the workers' unix sockets live under it
    root, state, logs = tmp / "models", tmp / "var" / "state.db", tmp / "logs"
    state.parent.mkdir()
    gw = None
    try:
        faults.copy_repository(a.models, root)
        gw = Gateway(
            root,
            state,
            "--workers",
            str(a.workers),
            metrics=True,
            log_dir=logs,
            cli_args=("--log-level", a.server_log_level),
        )
        t_start = time.monotonic()
        gw.start()
        LOG.info(
            "gateway %d on %s after %.1f s; load for %.0f s",
            gw.pid,
            gw.target,
            time.monotonic() - t_start,
            duration,
        )
        restarts0 = {k: v for k, v in gw.metrics().items() if "restart" in k}
        run = asyncio.run(drive(gw, root, state, a, duration))
        restarts1 = {k: v for k, v in gw.metrics().items() if "restart" in k}
    except Exception:
        LOG.exception("the soak could not run; logs in %s", logs)
        if gw is not None:
            gw.stop(signal.SIGKILL)
        return 2
    finally:
        if gw is not None:
            gw.stop()
        if (logs / "serve.log").is_file():
            shutil.copy(logs / "serve.log", a.out / "soak-serve.log")
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    warmup = a.warmup if a.warmup is not None else 0.1 * duration
    goals = verdict.Goals(duration_s=duration, warmup_s=warmup, wal_bound_mib=a.wal_bound_mib)
    versions = Counter(r[4] for r in run["outcomes"] if r[0] == "recommend" and r[3] == "OK")
    report = {
        "title": f"{a.minutes:g} min, {a.workers} workers, calls/s {run['mix']}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "command": "python -m tools.soak " + " ".join(sys.argv[1:] if argv is None else argv),
        "duration_s": duration,
        **{k: run[k] for k in ("interval_s", "mix", "events")},
        "answered_by_version": dict(versions),
        "restart_metrics": {"start": restarts0, "end": restarts1},
        "status_counts": verdict.errors(run["outcomes"]),
        "verdict": verdict.judge(run["samples"], run["outcomes"], goals),
        "windows": verdict.windows(run["outcomes"], [s["t"] for s in run["samples"]]),
        "samples": run["samples"],
    }
    (a.out / "soak.json").write_text(json.dumps(report, indent=1))
    # Every call (kind, t, latency_s, code, model_version): the verdict can be recomputed from it.
    (a.out / "soak-calls.json").write_text(json.dumps(run["outcomes"]))
    plot.plot(report, a.out / "soak.png")
    print(summary(report))
    print(f"wrote {a.out / 'soak.json'} and {a.out / 'soak.png'}")
    return 0 if report["verdict"]["pass"] else 1
