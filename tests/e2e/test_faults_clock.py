"""The wall clock jumps under a real `recgen serve`: nothing that guards a deadline, a rate or
an age may notice.

The jump is simulated without touching the host's clock: libfaketime (LD_PRELOAD, Debian's
`libfaketime` package; the test skips without it) shifts CLOCK_REALTIME for the gateway and
its workers by an offset read from a file the test rewrites (+1 day, then -1 day), and
leaves CLOCK_MONOTONIC alone (FAKETIME_DONT_FAKE_MONOTONIC). Python's time.time() and gRPC's
C core both see the jump, as they would on a host whose clock is stepped. Deadlines (gRPC's,
and the gateway's `time.monotonic()` arithmetic), the per-user feedback rate limiter
(server/ratelimit.py) and the worker supervisor's health timing must all be monotonic:

- a bucket emptied before a jump forward is still empty after it (a wall-clock limiter
  would have refilled it), and refills at its rate after a jump back (a wall-clock one
  would stay empty for a day);
- Recommend with a 10 s deadline answers OK at +1 day and at -1 day;
- the worker is not restarted, health stays SERVING, and an acknowledged DISMISS is in
  the next answer even though its wall-clock time is a day before the user's earlier events.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import grpc
import pytest

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tests.e2e.test_faults import SERVING, health
from tools.harness.procs import Gateway, env

pytestmark = pytest.mark.e2e

DAY = 86400.0
LIBFAKETIME = [
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"),
    Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"),
    Path("/usr/local/lib/faketime/libfaketimeMT.so.1"),
]


def _send(stub: pbg.RecommenderStub, n: int, user: str = "clock-user", item: str = "1", kind: int = 2) -> str:
    req = pb.SendFeedbackRequest(event_id=f"clock-{n}", user_id=user, item_id=item, type=kind)  # type: ignore[arg-type]
    try:
        stub.SendFeedback(req, timeout=10)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name  # type: ignore[attr-defined]


def test_wall_clock_jumps(model_root: Path, tmp_path: Path) -> None:
    lib = next((p for p in LIBFAKETIME if p.is_file()), None)
    if lib is None:
        pytest.skip("libfaketime not installed (apt-get install libfaketime)")
    offset = tmp_path / "offset"
    offset.write_text("+0\n")
    environ = env(
        LD_PRELOAD=str(lib),
        FAKETIME_TIMESTAMP_FILE=str(offset),
        FAKETIME_NO_CACHE="1",  # read the file at every call: the test moves the clock
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    # One event per 4 s sustained, 2 at once.
    extra = ("--workers", "1", "--feedback-rate", "0.25", "--feedback-burst", "2")
    with Gateway(model_root, tmp_path / "state.db", *extra, environ=environ, log_dir=tmp_path) as gw:
        workers = gw.worker_pids()
        with grpc.insecure_channel(gw.target) as ch:
            stub = pbg.RecommenderStub(ch)
            # The gateway's records carry the shifted time (checked at the end).
            assert [_send(stub, n) for n in range(3)] == ["OK", "OK", "RESOURCE_EXHAUSTED"]
            emptied = time.monotonic()
            offset.write_text("+1d\n")  # a day forward
            assert _send(stub, 10) == "RESOURCE_EXHAUSTED", "a wall-clock jump refilled the bucket"
            assert stub.Recommend(pb.RecommendRequest(user_id="clock-user", k=5), timeout=10).items
            offset.write_text("-1d\n")  # a day back
            top = stub.Recommend(pb.RecommendRequest(user_id="clock-2", k=5), timeout=10).items[0].item_id
            assert _send(stub, 20, user="clock-2", item=top, kind=pb.FEEDBACK_TYPE_DISMISS) == "OK"
            after = stub.Recommend(pb.RecommendRequest(user_id="clock-2", k=5), timeout=10)
            assert top not in [i.item_id for i in after.items], (
                "an acknowledged DISMISS is not in the next answer"
            )
            time.sleep(max(0.0, emptied + 4.5 - time.monotonic()))
            assert _send(stub, 30) == "OK", "the bucket did not refill after a jump back"
            time.sleep(2.0)  # a few supervisor rounds on the shifted clock
            assert health(gw.target) == SERVING
            assert gw.worker_pids() == workers, "a worker was restarted"
    with sqlite3.connect(tmp_path / "state.db") as db:
        ts = dict(db.execute("SELECT event_id, received_at FROM events"))
    assert ts["clock-20"] < ts["clock-0"] - DAY / 2, "the hook did not shift the gateway's wall clock"
