"""ImportEvents, the bulk path for feedback history: rows checked, batches committed in order.

The contract is in protos/recgen/v1/recommender.proto (rpc ImportEvents): each
message is one batch, validated row by row with SendFeedback's rules before
any of it is written, then committed in one durable transaction
(`StateStore.add_events_bulk`); a bad row or a conflicting event_id stops the
call, naming the row by its number in the call (from 1) and saying how many
rows before it are durable. The response waits for the last commit.

`ImportCall` keeps one write in flight while the next message is read and
checked: batch N commits on the store's writer thread while batch N+1 is
validated on the event loop. Before the call answers (or fails) the write in
flight is awaited, so what the answer says is durable is exactly what is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Container, Sequence

from recgen.v1 import recommender_pb2 as pb
from server.state import Conflict, Event, StoreUnavailable
from server.validation import (
    CONTROL_CHARS,
    FEEDBACK_TYPES,
    MAX_EVENT_ID_BYTES,
    MAX_ID_BYTES,
    MAX_REQUEST_ID_BYTES,
    InvalidArgument,
    feedback_from_pb,
    parse_time,
)

LOG = logging.getLogger(__name__)

MAX_IMPORT_ROWS = 10_000  # rows per ImportEvents message (the message is also at most 1 MiB)


class BadRow(InvalidArgument):
    """Row `index` of a batch breaks a rule; `problem` says which (`unknown item '42'`)."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(problem)
        self.index = index
        self.problem = problem


def events_from_pb(
    rows: Sequence[pb.SendFeedbackRequest],
    catalog: Container[str],
    now: float,
    times: Sequence[float | None] | None = None,
) -> list[Event]:
    """The rows as events, checked with SendFeedback's rules (`feedback_from_pb`) and
    against the catalog; BadRow names the first bad row. A row without a timestamp
    gets `times[i]` if given (the CLI's unix seconds), else `now` (SendFeedback: the
    server's clock).

    Fast path: the rules checked column by column over the whole batch (one regex
    scan for control characters, byte lengths by the longest id, the set of item
    ids against the catalog): the same rules, a few times faster than row by row.
    Anything it flags is looked up row by row with `feedback_from_pb` itself, so a
    bad row is always named with SendFeedback's own message."""
    try:
        events = _fast(rows, catalog, now, times)
    except InvalidArgument:
        events = None
    if events is None:
        events = _row_by_row(rows, catalog, now, times)
    return events


def _ids_ok(values: list[str], max_bytes: int, required: bool = True) -> bool:
    """`server.validation._id` for every value at once (True: all pass)."""
    if required and not all(values):
        return False
    joined = "".join(values)
    if CONTROL_CHARS.search(joined):
        return False
    longest = max(map(len, values), default=0)
    if longest * 4 <= max_bytes:  # a character is at most 4 bytes of UTF-8
        return True
    if joined.isascii():
        return longest <= max_bytes
    return all(len(v.encode("utf-8")) <= max_bytes for v in values)


def _fast(
    rows: Sequence[pb.SendFeedbackRequest],
    catalog: Container[str],
    now: float,
    times: Sequence[float | None] | None,
) -> list[Event] | None:
    """Every row valid: their events; else None (or InvalidArgument) and `_row_by_row`
    names the culprit."""
    event_ids = [r.event_id for r in rows]
    user_ids = [r.user_id for r in rows]
    item_ids = [r.item_id for r in rows]
    request_ids = [r.request_id for r in rows]
    if not (
        _ids_ok(event_ids, MAX_EVENT_ID_BYTES)
        and _ids_ok(user_ids, MAX_ID_BYTES)
        and _ids_ok(item_ids, MAX_ID_BYTES)
        and _ids_ok(request_ids, MAX_REQUEST_ID_BYTES, required=False)
        and all(i in catalog for i in set(item_ids))
    ):
        return None
    kinds = []
    values: list[float | None] = []
    stamps: list[float] = []
    for n, r in enumerate(rows):
        kind = FEEDBACK_TYPES.get(r.type)
        if kind is None:
            return None
        value = r.value if r.HasField("value") else None
        if kind == "RATE":
            if value is None or not 0.0 <= value <= 5.0:
                return None
        elif value is not None and not -1e6 <= value <= 1e6:
            return None
        kinds.append(kind)
        values.append(value)
        if r.timestamp:
            stamps.append(parse_time(r.timestamp, "timestamp").timestamp())
        else:
            given = times[n] if times is not None else None
            stamps.append(now if given is None else given)
    return [
        Event(e, u, i, k, v, t, q)
        for e, u, i, k, v, t, q in zip(
            event_ids, user_ids, item_ids, kinds, values, stamps, request_ids, strict=True
        )
    ]


def _row_by_row(
    rows: Sequence[pb.SendFeedbackRequest],
    catalog: Container[str],
    now: float,
    times: Sequence[float | None] | None,
) -> list[Event]:
    out = []
    for n, row in enumerate(rows):
        try:
            fb = feedback_from_pb(row)
            if fb.item_id not in catalog:
                raise InvalidArgument(f"unknown item {fb.item_id!r}")
        except InvalidArgument as e:
            raise BadRow(n, str(e)) from None
        given = times[n] if times is not None else None
        ts = fb.timestamp if fb.timestamp is not None else (now if given is None else given)
        out.append(Event(fb.event_id, fb.user_id, fb.item_id, fb.type, fb.value, ts, fb.request_id))
    return out


def batch_from_pb(
    msg: pb.ImportEventsRequest, first_row: int, catalog: Container[str], now: float
) -> list[Event]:
    """One ImportEvents message's events; InvalidArgument names the first bad row by its
    number in the call: `row 1234 (event_id 'x'): unknown item '42'`."""
    rows = msg.events
    if len(rows) > MAX_IMPORT_ROWS:
        raise InvalidArgument(
            f"rows {first_row}..{first_row + len(rows) - 1}: {len(rows)} rows in one message; "
            f"at most {MAX_IMPORT_ROWS}"
        )
    try:
        return events_from_pb(rows, catalog, now)
    except BadRow as e:
        event_id = rows[e.index].event_id[:128]
        raise InvalidArgument(f"row {first_row + e.index} (event_id {event_id!r}): {e.problem}") from None


class ImportCall:
    """One ImportEvents call: the batches committed so far and the one being written."""

    def __init__(self, write: Callable[[list[Event]], Awaitable[int]]) -> None:
        self._write = write
        self.read = 0  # rows read and checked (committed, being written)
        self.rows = self.stored = self.duplicates = self.batches = 0  # committed
        self._pending: tuple[asyncio.Task[int], int, int] | None = None  # task, first row, rows

    def durable(self) -> str:
        if not self.batches:
            return "no row of this call was stored"
        batches = "1 batch" if self.batches == 1 else f"{self.batches} batches"
        return (
            f"rows 1..{self.rows} ({batches} before it) are durable: "
            f"{self.stored} stored, {self.duplicates} duplicates"
        )

    def start(self, events: list[Event]) -> None:
        """Begin writing the next batch (call `settle` first)."""
        assert self._pending is None
        first = self.read + 1
        self.read += len(events)
        if not events:
            return
        # A task of its own: a caller that goes away mid-write does not cancel the
        # write; the task finishes (committed or not) and keeps the cache right.
        task = asyncio.ensure_future(self._write(events))
        task.add_done_callback(_retrieve)
        self._pending = (task, first, len(events))

    async def settle(self) -> None:
        """Wait for the batch being written and count it, or raise its error with
        the row it names and what is durable."""
        if self._pending is None:
            return
        task, first, n = self._pending
        self._pending = None
        try:
            stored = await asyncio.shield(task)
        except Conflict as e:
            row = f"row {first + e.index}" if e.index >= 0 else f"rows {first}..{first + n - 1}"
            raise Conflict(
                f"{row} (event_id {e.event_id!r}): this event_id was stored with another payload; "
                f"nothing of its batch was stored; {self.durable()}",
                e.event_id,
                e.index,
            ) from None
        except StoreUnavailable as e:
            raise StoreUnavailable(
                f"{e}; rows {first}..{first + n - 1} may or may not be stored; {self.durable()}"
            ) from None
        self.rows += n
        self.stored += stored
        self.duplicates += n - stored
        self.batches += 1

    def response(self) -> pb.ImportEventsResponse:
        return pb.ImportEventsResponse(
            received=self.rows, stored=self.stored, duplicates=self.duplicates, batches=self.batches
        )


def _retrieve(task: asyncio.Task[int]) -> None:
    """A write whose caller went away: its outcome is logged, not left unretrieved."""
    if not task.cancelled() and task.exception() is not None:
        LOG.debug("ImportEvents batch failed: %s", task.exception())
