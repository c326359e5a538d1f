"""The workload: builds one request of a randomly chosen kind (Recommend, Recommend with
explain, StreamRecommend, SendFeedback), sends it and hands its outcome to the Recorder.
When requests go out is tools.harness.load's; what the run reports is tools.loadtest.report's."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid

import grpc

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pb_grpc
from tools.loadtest.config import LoadConfig
from tools.loadtest.report import Recorder

LOG = logging.getLogger(__name__)
_FEEDBACK_TYPES = (
    pb.FEEDBACK_TYPE_VIEW,
    pb.FEEDBACK_TYPE_CLICK,
    pb.FEEDBACK_TYPE_PURCHASE,
    pb.FEEDBACK_TYPE_RATE,
)


class Requester:
    """Builds and sends one request of a randomly chosen kind and records its outcome."""

    def __init__(self, cfg: LoadConfig, rec: Recorder) -> None:
        self.cfg, self.rec = cfg, rec
        self.rng = random.Random(cfg.seed)
        # Cumulative thresholds: one random draw picks the kind.
        e, s, f = cfg.explain_share, cfg.stream_share, cfg.feedback_share
        self._cuts = ((e, "explain"), (e + s, "stream"), (e + s + f, "feedback"))
        self._users = [f"load-user-{i}" for i in range(cfg.users)]
        self._items = list(cfg.items)
        # Unique per run, so a rerun against the same state store never replays event ids.
        self._run_id = uuid.uuid4().hex[:12]
        self._events = itertools.count()
        self._text_timeout = cfg.text_timeout or cfg.timeout

    def _kind(self) -> str:
        r = self.rng.random()
        for cut, kind in self._cuts:
            if r < cut:
                return kind
        return "recommend"

    async def issue(self, stub: pb_grpc.RecommenderStub, t_sched: float) -> None:
        """Send one request due at t_sched and record its outcome, timed from t_sched."""
        kind = self._kind()
        deadline = self._text_timeout if kind in ("explain", "stream") else self.cfg.timeout
        measured = t_sched >= self.rec.measure_from  # earlier ones are warmup
        now = time.perf_counter()
        if measured and self.cfg.mode == "open":
            self.rec.send_lag.append(max(0.0, now - t_sched))
        # The clock starts at the scheduled time, or at the actual send when the scheduler released the
        # request a little early (tools.harness.load.open_loop): never later than the caller wanted.
        origin = min(t_sched, now)
        remaining = deadline - (now - origin)
        if remaining <= 0:
            # The caller's deadline passed while this request waited in the client: what a real caller
            # would see is DEADLINE_EXCEEDED, so that is what is counted.
            self.rec.expired += measured
            self.rec.done(kind, "DEADLINE_EXCEEDED", origin, now, measured)
            return
        self.rec.sent += measured
        user = self._users[self.rng.randrange(len(self._users))]
        code = "OK"
        try:
            if kind == "stream":
                code = await self._stream(stub, user, origin, remaining, measured)
            elif kind == "feedback":
                await stub.SendFeedback(self._feedback(user), timeout=remaining)
            else:
                msg = pb.RecommendRequest(user_id=user, k=self.cfg.k, explain=kind == "explain")
                await stub.Recommend(msg, timeout=remaining)
        except grpc.aio.AioRpcError as e:
            code = e.code().name
            if measured:
                self.rec.error_examples.setdefault(code, e.details() or "")
                LOG.debug("%s: %s", code, e.debug_error_string())
        except asyncio.CancelledError:
            self.rec.done(kind, "CANCELLED", origin, time.perf_counter(), measured)
            raise
        self.rec.done(kind, code, origin, time.perf_counter(), measured)

    async def _stream(
        self, stub: pb_grpc.RecommenderStub, user: str, origin: float, remaining: float, measured: bool
    ) -> str:
        req = pb.StreamRecommendRequest(request=pb.RecommendRequest(user_id=user, k=self.cfg.k, explain=True))
        call = stub.StreamRecommend(req, timeout=remaining)
        first_items = first_piece = None
        final = False
        async for ev in call:
            which = ev.WhichOneof("event")
            if which == "text_piece":
                if first_piece is None:
                    first_piece = time.perf_counter()
            elif which == "items":
                if first_items is None:
                    first_items = time.perf_counter()
            elif which == "final":
                final = True
        if not final:
            # Status OK but the protocol's last event is missing: an error, never a success.
            return "STREAM_WITHOUT_FINAL"
        if measured:
            if first_piece is not None:
                self.rec.first_piece.append(first_piece - origin)
            if first_items is not None:
                self.rec.first_items.append(first_items - origin)
        return "OK"

    def _feedback(self, user: str) -> pb.SendFeedbackRequest:
        ftype = _FEEDBACK_TYPES[self.rng.randrange(len(_FEEDBACK_TYPES))]
        req = pb.SendFeedbackRequest(
            event_id=f"load-{self._run_id}-{next(self._events)}",
            user_id=user,
            item_id=self._items[self.rng.randrange(len(self._items))],
            type=ftype,
        )
        if ftype == pb.FEEDBACK_TYPE_RATE:
            req.value = float(self.rng.randint(1, 5))
        return req
