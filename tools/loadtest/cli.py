"""`python -m tools.loadtest`: the command line (argparse -> LoadConfig and load points), the
--echo baseline, and the output files. The measuring is tools.loadtest.run's."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import tools.loadtest
from tools.loadtest.config import CLIENTS_PER_CHANNEL, DEFAULT_ITEMS, LoadConfig
from tools.loadtest.plot import plot
from tools.loadtest.report import Report, summary_table, unexpected_statuses, workload, write_json
from tools.loadtest.run import run_points, wait_ready


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.loadtest",
        description=(tools.loadtest.__doc__ or "").split("\n\n")[0],
        epilog="See docs/loadtest.md.",
    )
    p.add_argument("--target", help="HOST:PORT of a recgen.v1.Recommender server")
    p.add_argument(
        "--serve",
        metavar="MODELS",
        help="start `recgen serve --models MODELS` on 127.0.0.1 for the run and stop it after "
        "(instead of --target)",
    )
    p.add_argument("--serve-workers", type=int, default=2, help="--workers of --serve (default 2)")
    p.add_argument(
        "--state", default=None, help="--state of --serve (default: a fresh file in a temporary directory)"
    )
    p.add_argument("--name", default="", help="label of --target in the output (default: recgen)")
    p.add_argument(
        "--echo",
        action="store_true",
        help="also start tools.echo_server and run the same load against it (the baseline)",
    )
    mode = p.add_argument_group("load (closed loop unless a rate is given)")
    mode.add_argument("--concurrency", type=int, default=None, help="closed loop: clients (default 8)")
    mode.add_argument("--rate", type=float, default=None, help="open loop: requests/s on a fixed schedule")
    mode.add_argument(
        "--sweep-concurrency",
        type=_ints,
        default=None,
        metavar="N,N,..",
        help="closed loop at each concurrency",
    )
    mode.add_argument(
        "--sweep-rates", type=_floats, default=None, metavar="R,R,..", help="open loop at each rate"
    )
    mode.add_argument(
        "--max-outstanding",
        type=int,
        default=1024,
        help="open loop: in-flight requests at most; later ones wait and age (default 1024)",
    )
    mode.add_argument(
        "--channels",
        type=int,
        default=0,
        help=f"gRPC channels (TCP connections); 0: one per {CLIENTS_PER_CHANNEL} clients",
    )
    bound = p.add_argument_group("bounds")
    bound.add_argument(
        "--duration",
        type=float,
        default=None,
        help="measured seconds per run (default 10 unless --max-requests)",
    )
    bound.add_argument("--max-requests", type=int, default=None, help="requests per run at most")
    bound.add_argument(
        "--warmup", type=float, default=0.0, help="unmeasured seconds before each run (default 0)"
    )
    bound.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="caller's deadline per request in seconds, from its scheduled time (default 5)",
    )
    bound.add_argument(
        "--text-timeout",
        type=float,
        default=None,
        help="deadline for explain and stream requests (default: --timeout)",
    )
    bound.add_argument(
        "--wait-ready",
        type=float,
        default=0.0,
        help="first wait up to S seconds for the target's health service to say SERVING "
        "(default: do not wait)",
    )
    work = p.add_argument_group("workload (the rest is plain Recommend, explain=false)")
    work.add_argument("--explain-share", type=float, default=0.0, help="Recommend with explain=true")
    work.add_argument("--stream-share", type=float, default=0.0, help="StreamRecommend")
    work.add_argument("--feedback-share", type=float, default=0.0, help="SendFeedback")
    work.add_argument(
        "--users", type=int, default=1000, help='user ids "load-user-0".."load-user-(N-1)" (default 1000)'
    )
    work.add_argument("--items-file", help="feedback item ids, one per line (default: 1..1682)")
    work.add_argument("--k", type=int, default=10, help="items per Recommend")
    work.add_argument("--seed", type=int, default=0, help="of the request mix and user choice (default 0)")
    out = p.add_argument_group("output")
    out.add_argument("--json", help="write all reports as JSON here")
    out.add_argument("--plot", help="write a PNG of latency versus load here")
    out.add_argument(
        "--tool",
        choices=["own", "ghz"],
        default="own",
        help="ghz: use ghz when on PATH and the load is plain Recommend; otherwise (and by "
        "default) this generator",
    )
    out.add_argument("-v", "--verbose", action="store_true", help="log each run as it ends")
    return p


def points_from_args(args: argparse.Namespace) -> list[tuple[str, float]]:
    points: list[tuple[str, float]] = []
    closed = args.sweep_concurrency or ([args.concurrency] if args.concurrency else [])
    opened = args.sweep_rates or ([args.rate] if args.rate else [])
    points += [("closed", float(c)) for c in closed]
    points += [("open", r) for r in opened]
    return points or [("closed", 8.0)]


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    items: Sequence[str] = DEFAULT_ITEMS
    if args.items_file:
        items = [ln.strip() for ln in Path(args.items_file).read_text().splitlines() if ln.strip()]
    duration = args.duration if args.duration is not None else (None if args.max_requests else 10.0)
    return LoadConfig(
        target=args.target or "",
        name=args.name,
        max_outstanding=args.max_outstanding,
        duration=duration,
        max_requests=args.max_requests,
        warmup=args.warmup,
        timeout=args.timeout,
        text_timeout=args.text_timeout,
        explain_share=args.explain_share,
        stream_share=args.stream_share,
        feedback_share=args.feedback_share,
        users=args.users,
        items=items,
        k=args.k,
        channels=args.channels,
        seed=args.seed,
        tool=args.tool,
    )


async def _main_async(args: argparse.Namespace) -> list[Report]:
    from tools.echo_server import running_echo

    base = config_from_args(args)
    points = points_from_args(args)
    for _, level in points:
        dataclasses.replace(base, concurrency=int(level) if level >= 1 else 1).validate()
    reports: list[Report] = []
    if args.target:
        if args.wait_ready:
            await wait_ready(args.target, args.wait_ready)
        reports += await run_points(dataclasses.replace(base, name=args.name or "recgen"), points)
    if args.echo:
        # Same process, same workload, same run: the only difference is the server.
        with running_echo() as echo_target:
            reports += await run_points(dataclasses.replace(base, target=echo_target, name="echo"), points)
    return reports


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.target and not args.echo and not args.serve:
        build_parser().error("give --target HOST:PORT, --serve MODELS and/or --echo")
    if args.target and args.serve:
        build_parser().error("give --target or --serve, not both")
    try:
        if args.serve:
            from tools.loadtest.serve import served

            with served(args.serve, args.serve_workers, args.state) as target:
                args.target = target
                reports = asyncio.run(_main_async(args))
        else:
            reports = asyncio.run(_main_async(args))
    except (ValueError, TimeoutError, RuntimeError) as e:
        print(f"loadtest: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    for r in reports:
        print(r.table(), end="\n\n")
        if r.client_cpu > 0.9:
            print(f"  note: the load generator used {r.client_cpu:.2f} cores; it may be the bottleneck\n")
    if len(reports) > 1:
        print(summary_table(reports))
    if args.json:
        write_json(args.json, reports, {"workload": workload(config_from_args(args))})
    if args.plot:
        plot(reports, args.plot)
    # DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED past capacity are measured, not a failure; any other
    # status (INTERNAL, UNAVAILABLE from a healthy server, ...) is a bug the run must not hide.
    bad = unexpected_statuses(reports)
    if bad:
        print(f"loadtest: FAIL: unexpected statuses {bad}", file=sys.stderr)
        return 1
    return 0
