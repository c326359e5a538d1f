"""Faults through real processes: what the service does when its environment goes wrong.

One test per fault (docs/operating.md section 8 has one line each); every test runs a real `recgen serve`
with a real worker, keeps a little closed-loop traffic on it while the fault is on, and
checks the documented answer: which rpcs fail, with which status, what keeps answering,
and that it comes back by itself.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recgen.promotion import POINTER_HEALTH_SERVICE as POINTER_SERVICE
from recgen.promotion import promote
from recgen.repository import ModelRepository
from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg
from tests.model_versions import derive
from tools.harness.procs import Gateway, Worker

pytestmark = pytest.mark.e2e

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Load:
    """Recommend from a few threads until stopped; every outcome counted by status code."""

    def __init__(self, target: str, threads: int = 2, user: str = "fault-load") -> None:
        self.target, self.user = target, user
        self.codes: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with grpc.insecure_channel(self.target) as ch:
            stub = pbg.RecommenderStub(ch)
            while not self.stop.is_set():
                try:
                    r = stub.Recommend(pb.RecommendRequest(user_id=self.user, k=5), timeout=10)
                    self.codes["OK"] += 1
                    self.versions[r.model_version] += 1
                except grpc.RpcError as e:
                    self.codes[e.code().name] += 1  # type: ignore[attr-defined]
                    self.failed.append(f"{e.code().name}: {e.details()}")  # type: ignore[attr-defined]
                time.sleep(0.01)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def health(target: str, service: str = "") -> int:
    """Its status for `service`; SERVICE_UNKNOWN while it has none (NOT_FOUND)."""
    with grpc.insecure_channel(target) as ch:
        req = health_pb2.HealthCheckRequest(service=service)
        try:
            return health_pb2_grpc.HealthStub(ch).Check(req, timeout=5).status
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def corrupt(path: Path) -> None:
    """Flip bytes in the middle of a file, keeping its size (bit rot, a bad copy)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, min(mid + 64, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------ a corrupted model version


def test_corrupted_version_is_refused(model_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(model_root, root)
    v1 = ModelRepository(root).latest()
    with Gateway(root, tmp_path / "state.db", "--workers", "1", metrics=True, log_dir=tmp_path) as gw:
        ((_, listen),) = gw.worker_addresses()
        worker = listen if listen.startswith("unix:") else f"unix:{listen}"
        wait_for("the worker follows the pointer", lambda: health(worker, POINTER_SERVICE) == SERVING)
        with Load(gw.target) as load:
            # A version is exported and promoted; its scorer's bytes rot before the worker loads it
            # (the same as rotting after promotion: the worker checks the manifest's checksums).
            v2 = derive(root, "20991231T000000Z-rotten", reverse_popularity=True)
            corrupt(root / v2 / "scorer.onnx")
            assert promote(root, v2).promoted
            wait_for("the worker refuses it", lambda: health(worker, POINTER_SERVICE) == NOT_SERVING)
            time.sleep(1.0)
            refused = gw.metrics().get('recgen_worker_events_total{name="model_versions_refused"}', 0.0)
            assert refused >= 1
            assert health(gw.target) == SERVING and health(worker) == SERVING  # still answering
            wait_for("the gateway says so", lambda: health(gw.target, POINTER_SERVICE) == NOT_SERVING, 10)
            # A good version promoted next is taken, and the pointer's health is SERVING again.
            v3 = derive(root, "20991231T000001Z-good", source=v1)
            assert promote(root, v3).promoted
            wait_for("the worker takes the good one", lambda: health(worker, POINTER_SERVICE) == SERVING, 60)
            wait_for("the gateway says so", lambda: health(gw.target, POINTER_SERVICE) == SERVING, 10)
        assert not load.failed, load.failed[:5]
        assert load.versions[v1] > 0 and v2 not in load.versions, load.versions
        log = (tmp_path / "serve.log").read_text(errors="replace")
        assert f"model version {v2} refused" in log and "checksum mismatch" in log


# ------------------------------------------------------------ the state disk fills up

TMPFS_MIB = 3


def _feedback(stub: pbg.RecommenderStub, n: int, user: str = "disk-user") -> tuple[grpc.StatusCode, str]:
    req = pb.SendFeedbackRequest(
        event_id=f"disk-{n}", user_id=user, item_id=str(1 + n % 1000), type=pb.FEEDBACK_TYPE_CLICK
    )
    try:
        stub.SendFeedback(req, timeout=10)
        return grpc.StatusCode.OK, req.event_id
    except grpc.RpcError as e:
        return e.code(), req.event_id  # type: ignore[attr-defined]


def _fill(path: Path) -> int:
    """Write `path` until the file system is full; the bytes written."""
    n = 0
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                n += f.write(b"\0" * 65536)
        except OSError:
            pass
    return n


def test_state_disk_full(model_root: Path, tmp_path: Path) -> None:
    """SQLite state on a 3 MiB tmpfs, mounted in a private mount namespace of the gateway's own
    (`unshare -m`): nothing outside the test sees it. The test reaches the gateway's files
    through /proc/PID/root, which resolves paths in that process's mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) not installed")
    mnt = tmp_path / "state"
    mnt.mkdir()
    probe = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=1M",
            "tmpfs",
            str(mnt),
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip()}")
    mount = f'mount -t tmpfs -o size={TMPFS_MIB}M tmpfs "{mnt}" && exec "$@"'
    prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh"]
    gw = Gateway(model_root, mnt / "state.db", "--workers", "1", log_dir=tmp_path / "logs", prefix=prefix)
    with gw, grpc.insecure_channel(gw.target) as ch:
        stub = pbg.RecommenderStub(ch)
        inside = Path(f"/proc/{gw.pid}/root") / str(mnt).lstrip("/")
        acked: list[str] = []
        n = 0
        for _ in range(20):
            code, eid = _feedback(stub, n := n + 1)
            assert code == grpc.StatusCode.OK
            acked.append(eid)
        filler = inside / "filler"
        assert _fill(filler) > 0
        # Full: writes answer UNAVAILABLE (never INTERNAL), soon; reads keep answering.
        codes: Counter[str] = Counter()
        deadline = time.monotonic() + 15
        while codes["UNAVAILABLE"] < 5 and time.monotonic() < deadline:
            code, eid = _feedback(stub, n := n + 1)
            codes[code.name] += 1
            if code == grpc.StatusCode.OK:
                acked.append(eid)
        assert set(codes) <= {"OK", "UNAVAILABLE"} and codes["UNAVAILABLE"] >= 5, codes
        with Load(gw.target, threads=1) as load:
            time.sleep(1.0)
        assert load.codes["OK"] > 0 and not load.failed, (load.codes, load.failed[:3])
        assert stub.Recommend(pb.RecommendRequest(user_id="disk-user", k=5), timeout=10).items
        # Space returns: writes resume by themselves, no restart.
        filler.unlink()
        deadline = time.monotonic() + 10
        while (code := _feedback(stub, n := n + 1))[0] != grpc.StatusCode.OK and time.monotonic() < deadline:
            time.sleep(0.2)
        assert code[0] == grpc.StatusCode.OK, code
        acked.append(code[1])
        for _ in range(10):
            code = _feedback(stub, n := n + 1)
            assert code[0] == grpc.StatusCode.OK, code
            acked.append(code[1])
        assert health(gw.target) == SERVING
        # SQLite resolves the /proc/PID/root link to the host's "/": read a copy of the (quiet)
        # database and its WAL instead.
        for name in ("state.db", "state.db-wal"):
            if (inside / name).exists():
                shutil.copyfile(inside / name, tmp_path / name)
        db = sqlite3.connect(tmp_path / "state.db")
        try:
            stored = {r[0] for r in db.execute("SELECT event_id FROM events")}
        finally:
            db.close()
        assert not [e for e in acked if e not in stored]


# ------------------------------------------------------------ a worker over --worker-max-rss


def test_worker_over_max_rss_is_recycled(model_root: Path, tmp_path: Path) -> None:
    """`--worker-max-rss 1` (MiB): the gateway's local worker is over it as soon as it serves, so it
    recycles again and again: NOT_SERVING, drain, exit, restarted by the gateway. A second worker
    (a separate `recgen worker` on a unix socket, no limit) keeps the service up meanwhile; no
    client request may fail."""
    sock = tmp_path / "w.sock"
    with Worker(model_root, f"unix:{sock}", log_dir=tmp_path, name="steady"):
        extra = ("--workers", "1", "--worker-max-rss", "1", "--worker-address", f"unix:{sock}")
        with Gateway(model_root, tmp_path / "state.db", *extra, log_dir=tmp_path) as gw:
            first = {pid for pid, _ in gw.worker_addresses()}
            with Load(gw.target, threads=3) as load:
                log = tmp_path / "serve.log"
                wait_for(
                    "two recycles",
                    lambda: log.read_text(errors="replace").count("recycling (drain, exit, restart)") >= 2,
                    40,
                )
            now = {pid for pid, _ in gw.worker_addresses()}
            assert health(gw.target) == SERVING
    assert load.codes["OK"] > 50 and not load.failed, (load.codes, load.failed[:5])
    assert first and not (first & now), "the local worker was not replaced"
    text = (tmp_path / "serve.log").read_text(errors="replace")
    assert "worker stopping to recycle" in text and "Traceback" not in text


# ------------------------------------------------------------ PostgreSQL restarted under load


class Writers:
    """SendFeedback from a few threads, each event new; outcomes with their latency."""

    def __init__(self, target: str, threads: int = 3) -> None:
        self.target = target
        self.results: list[tuple[float, str, float, str]] = []  # (t, code, seconds, event_id)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        with grpc.insecure_channel(self.target) as ch:
            stub = pbg.RecommenderStub(ch)
            n = 0
            while not self.stop.is_set():
                n += 1
                eid = f"pg-{i}-{n}"
                req = pb.SendFeedbackRequest(
                    event_id=eid,
                    user_id=f"pg-user-{n % 7}",
                    item_id=str(1 + n % 500),
                    type=pb.FEEDBACK_TYPE_VIEW,
                )
                t0 = time.monotonic()
                try:
                    stub.SendFeedback(req, timeout=20)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name  # type: ignore[attr-defined]
                with self.lock:
                    self.results.append((t0, code, time.monotonic() - t0, eid))
                time.sleep(0.02)

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


@pytest.mark.parametrize("mode", ["immediate", "fast"])
def test_postgres_restarted_under_load(model_root: Path, postgres, tmp_path: Path, mode: str) -> None:
    """`pg_ctl stop -m immediate` (a crash) or `-m fast`, then start, while three clients write:
    writes fail fast with UNAVAILABLE while it is down, and succeed again without a gateway
    restart once it is back; nothing acknowledged is lost."""
    import psycopg

    url = postgres.new_database()
    with Gateway(model_root, url, "--workers", "1", log_dir=tmp_path) as gw, Writers(gw.target) as w:
        time.sleep(1.5)
        down_at = time.monotonic()
        postgres.stop(mode)
        time.sleep(2.0)
        postgres.start()
        up_at = time.monotonic()
        wait_for(
            "writes succeed again",
            lambda: any(t > up_at and c == "OK" for t, c, _, _ in list(w.results)),
            15,
        )
        time.sleep(1.0)
    codes = Counter(c for _, c, _, _ in w.results)
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    during = [s for t, c, s, _ in w.results if down_at + 0.5 < t < up_at - 0.5]
    assert during and codes["UNAVAILABLE"] > 0, codes
    assert max(during) < 5.0, f"writes while PostgreSQL was down took up to {max(during):.1f} s"
    acked = {e for _, c, _, e in w.results if c == "OK"}
    with psycopg.connect(url) as conn:
        stored = {r[0] for r in conn.execute("SELECT event_id FROM events")}
    assert acked and not acked - stored, f"{len(acked - stored)} acknowledged events lost"
