"""Scenario 5, durability: concurrent SendFeedback while the gateway is SIGKILLed at random
moments, cycle after cycle; unacknowledged events are retried with the same event_id.
Acknowledged events lost and events duplicated are counted in the SQLite file itself."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import sqlite3
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from server.validation import FEEDBACK_TYPES
from tools.chaos.plan import Plan, gateway
from tools.chaos.report import Row

LOG = logging.getLogger(__name__)


@dataclass
class FeedbackEvent:
    event_id: str
    user_id: str
    item_id: str
    type: pb.FeedbackType
    acked: bool = False
    attempts: int = 0

    def request(self) -> pb.SendFeedbackRequest:
        return pb.SendFeedbackRequest(
            event_id=self.event_id, user_id=self.user_id, item_id=self.item_id, type=self.type
        )


class Ledger:
    """Every event sent, whether it was acknowledged, and what each answer said."""

    def __init__(self, max_events: int, seed: int = 3) -> None:
        self.events: dict[str, FeedbackEvent] = {}
        self.retry: list[FeedbackEvent] = []  # sent, not acknowledged: to send again
        self.max_events = max_events
        self.rng = random.Random(seed)
        self.duplicates_sent = 0
        self.duplicates_stored = 0
        self.lost_acks = 0  # a retry answered stored=false: committed before the kill, ack lost
        self.new_not_stored = 0

    def next(self) -> FeedbackEvent | None:
        if self.retry:
            return self.retry.pop()
        if len(self.events) >= self.max_events:
            return None
        n = len(self.events)
        ev = FeedbackEvent(
            f"dur-{n}",
            f"dur-user-{self.rng.randrange(500)}",
            str(self.rng.randint(1, 1682)),
            self.rng.choice((pb.FEEDBACK_TYPE_VIEW, pb.FEEDBACK_TYPE_CLICK, pb.FEEDBACK_TYPE_PURCHASE)),
        )
        self.events[ev.event_id] = ev
        return ev

    def acked(self) -> list[FeedbackEvent]:
        return [e for e in self.events.values() if e.acked]


async def feedback_clients(target: str, ledger: Ledger, clients: int) -> Counter[str]:
    """Send events until the gateway is gone or the ledger has none left; an event without
    an answer goes back to be retried with the same id."""
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pbg.RecommenderStub(ch)

        async def client() -> None:
            while True:
                ev = ledger.next()
                if ev is None:
                    return
                ev.attempts += 1
                try:
                    r = await stub.SendFeedback(ev.request(), timeout=5.0)
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] += 1
                    ledger.retry.append(ev)
                    if e.code() == grpc.StatusCode.UNAVAILABLE:
                        return  # the gateway is gone; the next cycle retries
                    continue
                except asyncio.CancelledError:
                    ledger.retry.append(ev)
                    raise
                codes["OK"] += 1
                if ev.attempts > 1:
                    ledger.lost_acks += not r.stored and not ev.acked
                else:
                    ledger.new_not_stored += not r.stored  # a new id answered "stored before": a bug
                ev.acked = True
                if ledger.rng.random() < 0.05:  # a client that resends an acknowledged event
                    ledger.duplicates_sent += 1
                    try:
                        again = await stub.SendFeedback(ev.request(), timeout=5.0)
                    except grpc.aio.AioRpcError as e:
                        codes[e.code().name] += 1
                        continue
                    ledger.duplicates_stored += again.stored

        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
    return codes


def serve_defaults() -> argparse.Namespace:
    """`recgen serve`'s parsed defaults (and RECGEN_* variables): what the gateways here ran with.
    Through the public parser, so a reshuffle of the CLI's internals cannot break the scenario."""
    from recgen.cli import build_parser

    return build_parser().parse_args(["serve", "--models", "unused"])


def sqlite_settings(state: Path) -> dict[str, Any]:
    """The pragmas on a StateStore opened as `recgen serve` opens it, and the file's own mode."""
    from server.state import SQLiteStore

    sync = serve_defaults().synchronous
    store = SQLiteStore(state, synchronous=sync)
    try:
        writer = store._writer  # the connection SendFeedback commits on
        out = {
            "serve_default": sync,
            "writer_synchronous": int(writer.execute("PRAGMA synchronous").fetchone()[0]),
            "writer_journal_mode": writer.execute("PRAGMA journal_mode").fetchone()[0],
            "reader_synchronous": int(store.pragma("synchronous")),
            "wal_autocheckpoint_pages": int(writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0]),
            "page_size": int(writer.execute("PRAGMA page_size").fetchone()[0]),
        }
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(state)) as db:  # persistent in the file
        out["file_journal_mode"] = db.execute("PRAGMA journal_mode").fetchone()[0]
    return out


def sync_cost(workdir: Path, n: int = 100) -> dict[str, Any]:
    """Commits per second with FULL and NORMAL, and WAL frames one event costs, in a scratch file:
    what NORMAL could lose on power loss is the events committed since the last checkpoint."""
    from server.state import Event, SQLiteStore

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        for mode in ("FULL", "NORMAL"):
            path = Path(d) / f"{mode}.db"
            store = SQLiteStore(path, synchronous=mode)
            try:
                store.add_event_sync(Event("warm", "u", "1", "CLICK", None, 0.0))
                wal0 = path.with_name(path.name + "-wal").stat().st_size
                t = time.perf_counter()
                for i in range(n):
                    store.add_event_sync(
                        Event(f"e{i}", f"u{i % 50}", str(1 + i % 1682), "CLICK", None, time.time())
                    )
                dt = time.perf_counter() - t
                wal1 = path.with_name(path.name + "-wal").stat().st_size
                page = int(store.pragma("page_size"))
            finally:
                store.close()
            out[mode] = {"commits_per_s": round(n / dt, 1), "ms_per_commit": round(dt / n * 1e3, 2)}
            if wal1 > wal0:
                out[mode]["wal_frames_per_event"] = round((wal1 - wal0) / (page + 24) / n, 2)
    return out


async def durability(models: Path, plan: Plan) -> dict[str, Any]:
    state = plan.dir / "durability.db"
    ledger = Ledger(plan.max_events)
    rng = random.Random(11)
    codes: Counter[str] = Counter()
    cycles = []
    # One worker: the pool needs one to start (the --shards check refuses 0), though the feedback
    # path never touches it.
    args = ("--workers", "1", "--feedback-rate", "0")
    for c in range(plan.cycles):
        serve = gateway(plan, models, state.name, f"durability-{c}", *args).start()
        try:
            sender = asyncio.create_task(feedback_clients(serve.target, ledger, plan.feedback_clients))
            before = len(ledger.acked())
            kill_at = rng.uniform(*plan.cycle_load_s)
            await asyncio.sleep(kill_at)
            os.kill(serve.pid, signal.SIGKILL)  # at any moment: mid-commit, mid-answer
            await asyncio.to_thread(serve.proc.wait)  # type: ignore[union-attr]
            try:
                codes += await asyncio.wait_for(sender, 15.0)
            except TimeoutError:
                LOG.warning("cycle %d: clients did not stop in 15 s", c)
            cycles.append({"killed_after_s": round(kill_at, 2), "acked": len(ledger.acked()) - before})
        finally:
            serve.stop(signal.SIGKILL)
    # A last gateway: retry what was never acknowledged, then a clean stop.
    with gateway(plan, models, state.name, "durability-final", *args) as serve:
        ledger.max_events = len(ledger.events)  # no new events, retries only
        for _ in range(5):
            if not ledger.retry:
                break
            codes += await asyncio.wait_for(feedback_clients(serve.target, ledger, 8), 60.0)
        settings = sqlite_settings(state)
    with contextlib.closing(sqlite3.connect(state)) as db:
        rows = db.execute(
            "SELECT event_id, user_id, item_id, type FROM events WHERE event_id LIKE 'dur-%'"
        ).fetchall()
    stored = Counter(r[0] for r in rows)
    sent = ledger.events
    acked = {e.event_id for e in ledger.acked()}
    wrong = sum(
        eid in sent
        and (sent[eid].user_id, sent[eid].item_id, FEEDBACK_TYPES[sent[eid].type]) != (user, item, typ)
        for eid, user, item, typ in rows
    )
    retried = [e for e in sent.values() if e.attempts > 1]
    return {
        "cycles": cycles,
        "events_sent": len(sent),
        "acknowledged": len(acked),
        "never_acknowledged": len(sent) - len(acked),
        "status_counts": dict(codes),
        "retried_events": len(retried),
        "committed_but_ack_lost": ledger.lost_acks,
        "first_send_not_stored": ledger.new_not_stored,
        "resent_after_ack": ledger.duplicates_sent,
        "resent_after_ack_stored_again": ledger.duplicates_stored,
        "rows_in_file": len(rows),
        "lost": len(acked - set(stored)),
        "duplicated": sum(n - 1 for n in stored.values()),
        "unknown_in_file": len(set(stored) - set(sent)),
        "payload_mismatch": wrong,
        "sqlite": settings,
        "sync_cost": sync_cost(plan.dir),
    }


def row(du: dict[str, Any]) -> Row:
    sq = du["sqlite"]
    return Row(
        f"gateway SIGKILL x{len(du['cycles'])}",
        f"{du['acknowledged']} events acknowledged; {du['retried_events']} retried with the same "
        f"event_id ({du['committed_but_ack_lost']} had committed before the kill), "
        f"{du['resent_after_ack']} resent after their ack; synchronous={sq['writer_synchronous']} "
        f"(FULL), journal_mode={sq['writer_journal_mode']}",
        f"lost {du['lost']}, duplicated {du['duplicated']}, never acknowledged {du['never_acknowledged']}",
        du["lost"] == 0
        and du["duplicated"] == 0
        and du["payload_mismatch"] == 0
        and du["unknown_in_file"] == 0
        and du["never_acknowledged"] == 0
        and du["first_send_not_stored"] == 0
        and du["resent_after_ack_stored_again"] == 0
        and sq["writer_synchronous"] == 2
        and sq["writer_journal_mode"] == "wal",
    )
