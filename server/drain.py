"""The SIGTERM drain of the public gRPC server: clients are moved off first, then it stops.

Why not only `server.stop(grace)`: grpc core's shutdown cancels two kinds of calls, and their
clients get CANCELLED, a status no retry policy retries (grpc/grpc#41785). Calls that reached the
server but were not yet matched to a handler (grpc.aio asks core for one call per method at a
time, so under load some wait in core's queue) are dropped by the shutdown itself
(ZombifyPending in core's server.cc), and calls that arrive after the shutdown began, sent before
the client read the GOAWAY the shutdown sends, are dropped on arrival (StartNewRpc). No handler
runs for either, so no interceptor sees them. Clients keep one HTTP/2 connection through an L4
balancer, so until a GOAWAY they go on sending to a gateway that is draining; health
NOT_SERVING and a pause before the stop move only the clients that watch health.

grpc Python has no call that sends GOAWAY and goes on serving, but the connection-age limit
does exactly that (gRFC A9): GOAWAY, the connection's calls finish, the client opens a new
connection (through the balancer, to another gateway) for its next call; a call it sent before
it read the GOAWAY is still served, since the server is not stopping (tests/e2e/
test_connection_age.py: no call fails across cycles). So when the connection age fits in the
grace (`--max-connection-age-s` at most half of `--grace`: `drain_fits`), the drain waits until
the connections that were open have had their GOAWAY and left (counted in grpc's own channelz
registry) before it stops the server (tests/unit/test_drain.py). The age is not capped for the
operator: every connection's calls then face a GOAWAY every few seconds, and a large request
(over grpc's 256 KiB retry buffer) or a long ImportEvents stream that meets one fails UNAVAILABLE;
a long age (the default, 300 s) keeps those safe, and its drain stops at once, as before.

What it does not do: keep a balancer from opening new connections to a draining gateway. Take
it out of the balancer first (Kubernetes: the preStop pause); a connection opened during the
drain is still open when the server stops, and a call on it may end CANCELLED (logged).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import grpc

LOG = logging.getLogger(__name__)

AGE_SHARE_OF_GRACE = 0.5  # connections cycle within half the grace: the rest is for calls in flight
AGE_JITTER = 0.1  # grpc core spreads each connection's age by +-10% (gRFC A9)
GOAWAY_SLACK_S = 0.5  # GOAWAY's ping round trip, then the calls the connection had in flight
POLL_S = 0.05


def drain_fits(age_s: float, grace_s: float) -> bool:
    """Whether every connection open at SIGTERM gets its age GOAWAY within the grace, with half
    of the grace left for the calls in flight: only then can the drain move clients off first."""
    return 0 < age_s <= grace_s * AGE_SHARE_OF_GRACE


def _cygrpc() -> Any:
    """grpc's channelz registry (what the grpcio-channelz service serves): private to grpc, so
    every use below survives its absence (then the drain waits its full bound)."""
    from grpc._cython import cygrpc

    return cygrpc


def server_ids() -> set[int]:
    """Channelz ids of the gRPC servers in this process (empty when unknown)."""
    try:
        page = json.loads(_cygrpc().channelz_get_servers(0))
        return {int(s["ref"]["serverId"]) for s in page.get("server", ())}
    except Exception:  # noqa: BLE001 - private API: absent or changed means unknown, never fatal
        LOG.debug("channelz: no server list", exc_info=True)
        return set()


def new_server_id(before: set[int]) -> int | None:
    """The one server created since `before` was taken, or None when that is not clear."""
    new = server_ids() - before
    return new.pop() if len(new) == 1 else None


def open_connections(server_id: int | None) -> int | None:
    """Client connections open on the server (None when unknown)."""
    if server_id is None:
        return None
    try:
        page = json.loads(_cygrpc().channelz_get_server_sockets(server_id, 0, 0))
        return len(page.get("socketRef", ()))
    except Exception:  # noqa: BLE001 - see server_ids
        LOG.debug("channelz: no sockets for server %s", server_id, exc_info=True)
        return None


async def drain(server: grpc.aio.Server, server_id: int | None, *, grace_s: float, age_s: float) -> None:
    """Wait until the server's connections have had their age GOAWAY and left, then stop it with
    what remains of the grace. Call it after health says NOT_SERVING; the server serves on
    meanwhile (calls on a connection until its GOAWAY are served as usual)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    left = open_connections(server_id)
    if not drain_fits(age_s, grace_s):
        LOG.info(
            "drain: connection age %.1f s does not fit in half the grace (%.1f s): stopping now;"
            " calls that reach the server as it stops can end CANCELLED (server/drain.py)",
            age_s,
            grace_s,
        )
    elif left != 0:
        # Every connection open now has had its GOAWAY by this bound, and its calls have moved.
        bound = min(grace_s, age_s * (1 + AGE_JITTER) + GOAWAY_SLACK_S)
        while loop.time() - t0 < bound:
            await asyncio.sleep(POLL_S)
            left = open_connections(server_id)
            if left == 0:
                break
        if left:
            LOG.warning(
                "drain: %d client connection(s) still open after %.1f s (opened during the drain?);"
                " stopping, calls they start now may end CANCELLED",
                left,
                loop.time() - t0,
            )
    waited = loop.time() - t0
    LOG.info("drain: clients moved off in %.2f s; stopping the server", waited)
    # Calls in flight get the rest of the grace, and never less than a second of it.
    await server.stop(grace=max(grace_s - waited, min(grace_s, 1.0)))
