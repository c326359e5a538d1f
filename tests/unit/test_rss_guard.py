"""worker/rss_guard.py: reads this process's real RSS and asks for a recycle past the limit."""

from __future__ import annotations

import asyncio

import pytest

from worker import rss_guard


def test_rss_is_this_process() -> None:
    held = bytearray(64 << 20)  # 64 MiB, touched so they are resident
    for i in range(0, len(held), 4096):
        held[i] = 1
    assert rss_guard.rss_mib() > 64
    del held


@pytest.mark.parametrize(("limit", "recycles"), [(1, True), (1 << 30, False)])
def test_watch_rss(monkeypatch: pytest.MonkeyPatch, limit: int, recycles: bool) -> None:
    monkeypatch.setattr(rss_guard, "CHECK_EVERY_S", 0.01)

    async def run() -> tuple[bool, bool]:
        recycle, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(rss_guard.watch_rss(limit, recycle, stop))
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(task, 1.0)
        return recycle.is_set(), task.done()

    recycled, done = asyncio.run(run())
    assert recycled is recycles and done
