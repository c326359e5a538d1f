"""Recycle a worker whose memory grew past `--worker-max-rss`: notice it, drain, exit.

A slow leak (a native library's arena, a cache that grows with the catalog) should
cost a worker restart, not the host's OOM killer in the middle of requests. The
guard reads the process's resident set size (/proc/self/statm) every CHECK_EVERY_S
once the worker serves; past the limit it logs why and sets the `recycle` event and
the worker's stop event. worker/main.py then turns health NOT_SERVING (the gateway
takes the worker out of rotation), keeps serving for RECYCLE_NOTICE_S so requests
already routed here still land, stops accepting new calls, lets the ones in flight
finish (up to RECYCLE_GRACE_S) and exits; the gateway's supervisor starts a fresh
one (server/workers.py).

What it does not do: free memory, limit it (that is the cgroup's job), or decide
which worker to restart next: each worker watches only itself.
"""

from __future__ import annotations

import asyncio
import logging
import os

LOG = logging.getLogger(__name__)

CHECK_EVERY_S = 1.0  # how often the RSS is read (one small file read)
RECYCLE_NOTICE_S = 0.5  # NOT_SERVING this long, still answering, before new calls are refused
RECYCLE_GRACE_S = 30.0  # longest the calls in flight get to finish once new ones are refused
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    """This process's resident set size, MiB (Linux /proc; 0 where it is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / (1 << 20)
    except (OSError, IndexError, ValueError):
        return 0.0


async def watch_rss(limit_mib: int, recycle: asyncio.Event, stop: asyncio.Event) -> None:
    """Until `stop`: when the RSS is over `limit_mib`, set `recycle` and `stop`."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=CHECK_EVERY_S)
            return
        except TimeoutError:
            pass
        rss = rss_mib()
        if rss > limit_mib:
            LOG.warning(
                "worker RSS %.0f MiB is over --worker-max-rss %d MiB: recycling (drain, exit, restart)",
                rss,
                limit_mib,
            )
            recycle.set()
            stop.set()
            return
