"""recgen's own asyncio gRPC load generator for recgen.v1.Recommender.

    python -m tools.loadtest --target 127.0.0.1:50051 --concurrency 8 --duration 20
    python -m tools.loadtest --target 127.0.0.1:50051 --sweep-rates 50,100,200 --echo \\
        --json docs/loadtest.json --plot docs/loadtest.png

Two ways to load a server:

* closed loop (`--concurrency N`): N clients, each sending its next request
  when the previous answer arrived. The server sets the pace, so this finds
  the throughput ceiling, but it hides queueing: a slow answer also delays
  the requests that would have come meanwhile.
* open loop (`--rate R`): requests are due on a fixed schedule whatever the
  server does. Latency counts from each request's *scheduled* send time, so
  time spent waiting (in the server, in the network, or in this client when
  `--max-outstanding` requests are already in flight) is in the figure.
  That is the correction for coordinated omission: a stalled server cannot
  make the load tool politely stop sending and thereby hide the stall.

The caller's deadline (`--timeout`) counts from the same scheduled time: a
request still waiting in this client when its deadline has passed is never
sent and counts as DEADLINE_EXCEEDED (and in `expired_before_send`).

Library use: `report = await run_load(LoadConfig(target=..., rate=100))`.

Modules: config (LoadConfig), workload (the requests), run (run_load, run_points on
tools.harness.load's schedule), report (Report, JSON, tables), plot, ghz, serve (the
--serve gateway), cli.
"""

from tools.loadtest.config import DEFAULT_ITEMS, KINDS, LoadConfig
from tools.loadtest.ghz import report_from_ghz, run_ghz
from tools.loadtest.plot import plot
from tools.loadtest.report import KindStats, Report, summary_table, write_json
from tools.loadtest.run import run_load, run_points, wait_ready

__all__ = [
    "DEFAULT_ITEMS",
    "KINDS",
    "KindStats",
    "LoadConfig",
    "Report",
    "plot",
    "report_from_ghz",
    "run_ghz",
    "run_load",
    "run_points",
    "summary_table",
    "wait_ready",
    "write_json",
]
