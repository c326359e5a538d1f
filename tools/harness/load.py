"""The load generator's schedule: closed loop (N clients back to back) or open loop (a fixed rate).

    chans = await connect(target, n)               # n channels, each its own TCP connection
    stubs = [RecommenderStub(c) for c in chans]
    t0 = await open_loop(send, stubs, rate=100.0, seconds=10.0)
    t0 = await closed_loop(send, stubs, concurrency=8, seconds=10.0)

`send(stub, t_sched)` is the caller's: it sends one request due at `t_sched` (perf_counter)
and records its outcome, timing it from t_sched, never from when it was actually sent. So in
the open loop, time a request waited in this client (all senders busy, or the event loop late)
is in its latency: a stalled server cannot make the load politely stop and hide the stall
(coordinated omission). `send` must never raise, except CancelledError.

This module decides when requests go out, and nothing else: not what they are, what counts
as an error, nor what is reported (tools.loadtest and tools.chaos each have their own).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

LOG = logging.getLogger(__name__)
Send = Callable[[Any, float], Awaitable[Any]]  # (stub, scheduled time) -> None; records the outcome
# How early an open-loop request may be released: asyncio's timer resolution (see open_loop).
SCHEDULE_SLACK = 0.001


def channels(target: str, n: int) -> list[grpc.aio.Channel]:
    """n insecure channels to target, each with its own TCP connection.

    A local subchannel pool does that; otherwise grpc shares one connection among all channels
    to the same target and the "channels" would be a fiction.
    """
    return [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(n)
    ]


async def connect(target: str, n: int, wait: float) -> list[grpc.aio.Channel]:
    """channels(target, n), each waited for until READY or a failure (at most `wait` seconds), so
    connection set-up is not in the first latencies, but a target that refuses connections is
    not waited for: its errors are counted instead."""
    chans = channels(target, n)

    async def ready(ch: grpc.aio.Channel) -> None:
        state = ch.get_state(try_to_connect=True)
        while state not in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
            await ch.wait_for_state_change(state)
            state = ch.get_state()

    try:
        await asyncio.wait_for(asyncio.gather(*(ready(c) for c in chans)), wait)
    except TimeoutError:
        LOG.warning("%s: not all channels connected within %.1f s", target, wait)
    return chans


async def closed_loop(
    send: Send,
    stubs: Sequence[Any],
    concurrency: int,
    *,
    seconds: float = math.inf,
    limit: float = math.inf,
    on_start: Callable[[], float] = time.perf_counter,
) -> float:
    """`concurrency` clients, each sending its next request when the previous one is done, until
    `seconds` after the start or `limit` requests; returns the start time (on_start's answer)."""
    issued = 0
    t0 = on_start()
    end = t0 + seconds

    async def client(stub: Any) -> None:
        nonlocal issued
        while issued < limit:
            now = time.perf_counter()
            if now >= end:
                return
            issued += 1
            await send(stub, now)

    await asyncio.gather(*(client(stubs[i % len(stubs)]) for i in range(concurrency)))
    return t0


async def open_loop(
    send: Send,
    stubs: Sequence[Any],
    rate: float,
    *,
    seconds: float = math.inf,
    limit: float = math.inf,
    max_outstanding: int | None = None,
    stop: asyncio.Event | None = None,
    slack: float = SCHEDULE_SLACK,
    on_start: Callable[[], float] = time.perf_counter,
) -> float:
    """Requests due every 1/rate seconds from the start until `seconds` later, `limit` requests, or
    `stop` is set; returns once every request is done, with the start time (on_start's answer).

    max_outstanding: that many senders take the due times from a FIFO; when all are busy, due
    times wait in the queue and keep aging. None: every request is sent when due, however many
    are outstanding (then only their deadlines bound them).
    slack: a request is released this early, since asyncio's epoll wait rounds up to whole
    milliseconds and a sleep until t_i would wake up to ~1 ms late; `send` should time such a
    request from its actual send (min(t_sched, now)) so the client's timer stays out of the figures.
    """
    assert rate > 0, "rate must be > 0"
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    tasks: list[asyncio.Task[Any]] = []
    n_stubs = len(stubs)

    async def sender(stub: Any) -> None:
        while (t_sched := await queue.get()) is not None:
            await send(stub, t_sched)

    try:
        if max_outstanding is not None:
            tasks = [asyncio.create_task(sender(stubs[i % n_stubs])) for i in range(max_outstanding)]
        t0 = on_start()  # after creating the senders: that takes a few ms
        end = t0 + seconds
        interval = 1.0 / rate
        for i in itertools.count():
            t_i = t0 + i * interval
            if t_i >= end or i >= limit or (stop is not None and stop.is_set()):
                break
            delay = t_i - time.perf_counter() - slack
            if delay > 0:
                await asyncio.sleep(delay)
            # If the loop woke late, overdue requests go out at once with their scheduled times.
            if max_outstanding is None:
                tasks.append(asyncio.create_task(send(stubs[i % n_stubs], t_i)))
            else:
                queue.put_nowait(t_i)
        if max_outstanding is not None:
            for _ in range(max_outstanding):
                queue.put_nowait(None)
        await asyncio.gather(*tasks)
        return t0
    finally:
        for t in tasks:
            t.cancel()
