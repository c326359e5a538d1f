"""Ending requests early: waiting ones past their deadline, running rows cancelled or past it.

The scheduler calls these once per iteration, before it admits and prefills,
so that a request nobody waits for costs no further prefill or decode step.
Each ended request gets its `Finished` event ("deadline" or "cancelled")
through the outbox. This module does not take cancellations from submitters
(`Generator._cancel` collects them under the generator's lock) and runs no
model.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from worker.llm.batch import Request, RunningBatch
from worker.llm.events import Outbox
from worker.llm.stream import StopReason


def expire_waiting(waiting: deque[Request], now: float, outbox: Outbox) -> None:
    """Finish ("deadline") and remove the waiting requests whose deadline has passed."""
    if any(r.deadline <= now for r in waiting):
        for r in [r for r in waiting if r.deadline <= now]:
            waiting.remove(r)
            outbox.finish(r, "deadline")


def retire(b: RunningBatch | None, cancels: set[int], now: float, outbox: Outbox) -> RunningBatch | None:
    """Drop cancelled and expired rows before they cost another step; returns the rows left."""
    if b is None:
        return None
    gone = b.deadlines <= now
    cancelled = np.zeros_like(gone)
    if cancels:
        cancelled = np.isin(b.ids, np.fromiter(cancels, dtype=np.int64, count=len(cancels)))
        gone |= cancelled
    if not gone.any():
        return b
    for row in np.flatnonzero(gone).tolist():
        reason: StopReason = "cancelled" if cancelled[row] else "deadline"
        outbox.finish(b.reqs[row], reason, steps=int(b.steps[row]))
    keep = np.flatnonzero(~gone)
    return b.select(keep) if keep.size else None
