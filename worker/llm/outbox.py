"""The scheduler's outbox: events for submitters, gathered during a step, delivered per loop.

The scheduler thread appends `TextPiece` and `Finished` events while it
works and hands them over in one `call_soon_threadsafe` per submitter loop
after the step, so a step with 32 rows costs a few thread hops, not 32.
"""

from __future__ import annotations

import asyncio
import threading

from worker.llm.api import Event, Finished, GenerationHandle, StopReason, TextPiece, deliver
from worker.llm.batch import Request

Items = list[tuple[GenerationHandle, Event]]  # (handle, event) in delivery order


class Outbox:
    """Events for submitters, gathered during a step, delivered per loop; counts how requests ended.

    The scheduler thread appends events while it works. `finish` may also be
    called from a submitter's thread (a request cancelled while still
    waiting) with its own list, hence the lock around the counts.
    """

    def __init__(self) -> None:
        self._items: Items = []
        self._finished_by: dict[str, int] = {}  # StopReason value -> requests
        self._lock = threading.Lock()  # guards _finished_by (two threads finish requests)

    def text(self, handle: GenerationHandle, piece: str) -> None:
        self._items.append((handle, TextPiece(piece)))

    def finish(
        self,
        req: Request,
        reason: StopReason,
        *,
        steps: int | None = None,
        error: str | None = None,
        into: Items | None = None,
    ) -> None:
        """Final events for `req`: the detokenizer's rest (unless cancelled), then Finished.

        into: a list to put them in instead of this outbox (the caller delivers it).
        """
        items = self._items if into is None else into
        handle = req.handle
        if handle.finished is not None:
            return
        if steps is not None:
            handle.decode_steps = steps
        if reason != StopReason.CANCELLED:
            rest = req.detok.flush()
            if rest:
                items.append((handle, TextPiece(rest)))
        handle.finished = Finished(reason, len(req.detok.ids), error)
        items.append((handle, handle.finished))
        with self._lock:
            self._finished_by[reason.value] = self._finished_by.get(reason.value, 0) + 1

    def finished_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._finished_by)

    def deliver(self) -> list[int]:
        """Hand the events to their loops; returns the ids of unfinished requests whose loop is closed."""
        if not self._items:
            return []
        by_loop: dict[asyncio.AbstractEventLoop, Items] = {}
        for handle, event in self._items:
            by_loop.setdefault(handle.loop, []).append((handle, event))
        self._items = []
        orphans = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(deliver, items)
            except RuntimeError:  # the submitter's loop is closed: nobody is listening
                for handle, _ in items:
                    if handle.finished is None:
                        handle.cancel_requested = True
                        orphans.append(handle.request_id)
        return orphans
