"""The dynamic batcher: real batching, bounded queue, deadlines, cancellation."""

import asyncio
import gc
import threading
import time

import pytest

from worker.batcher import Batcher, DeadlineExpired, QueueFull


def test_concurrent_requests_share_batches() -> None:
    sizes: list[int] = []

    def run(items):
        sizes.append(len(items))
        return [x * 2 for x in items]

    async def main():
        b = Batcher(run, name="t", max_batch=8, max_delay=0.01, max_queue=64)
        return await asyncio.gather(*(b.submit(i) for i in range(20)))

    assert asyncio.run(main()) == [i * 2 for i in range(20)]
    assert max(sizes) == 8 and sum(sizes) == 20


def test_full_queue_rejects_at_once_and_deadline_drops_work() -> None:
    gate = threading.Event()
    ran: list[int] = []

    def run(items):
        gate.wait(5)
        ran.extend(items)
        return items

    async def main():
        b = Batcher(run, name="t", max_batch=1, max_delay=0.0, max_queue=2)
        first = asyncio.create_task(b.submit(0))  # occupies the model thread
        await asyncio.sleep(0.05)
        expiring = asyncio.create_task(b.submit(1, deadline=time.monotonic() + 0.01))
        waiting = asyncio.create_task(b.submit(2))
        await asyncio.sleep(0.02)
        with pytest.raises(QueueFull):
            await b.submit(3)
        await asyncio.sleep(0.05)  # request 1's deadline passes while queued
        gate.set()
        assert await first == 0 and await waiting == 2
        with pytest.raises(DeadlineExpired):
            await expiring

    asyncio.run(main())
    assert ran == [0, 2]  # the expired request cost no model work


def test_cancelled_request_costs_nothing() -> None:
    gate = threading.Event()
    ran: list[int] = []

    def run(items):
        gate.wait(5)
        ran.extend(items)
        return items

    async def main():
        b = Batcher(run, name="t", max_batch=1, max_delay=0.0, max_queue=8)
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.05)
        doomed = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0.01)
        doomed.cancel()
        gate.set()
        await first

    asyncio.run(main())
    assert ran == [0]


def test_running_batch_task_is_held_by_the_batcher() -> None:
    """The event loop holds tasks weakly: the batcher keeps its running batch's task alive."""
    gate = threading.Event()

    def run(items):
        gate.wait(5)
        return items

    async def main():
        b = Batcher(run, name="t", max_batch=1, max_delay=0.0, max_queue=4)
        pending = asyncio.create_task(b.submit(7))
        await asyncio.sleep(0.05)
        task = b._task
        assert task is not None and not task.done()
        del task
        gc.collect()
        gate.set()
        assert await pending == 7
        assert b._task is not None and b._task.done()

    asyncio.run(main())
