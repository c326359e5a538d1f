"""Bulk import throughput: ImportEvents through a real gateway and `recgen import`, against
a plain SQLite `executemany` of the same rows into the same schema, in the same run.

Four ways to write the same N synthetic feedback events (default 100,000: 4,000 users,
MovieLens item ids with a popularity skew, every type, RATE values, increasing times), each
into its own SQLite file in WAL mode with `synchronous=FULL`, one transaction per `--batch`
rows (5,000):

- `executemany` (the baseline): `sqlite3` inserting prepared tuples (payload hash and all
  computed before the clock starts) into the schema `SQLiteStore` creates: the floor of
  any path through Python's sqlite3 module with this durability;
- `store`: `SQLiteStore.add_events_bulk_sync` on prepared `Event`s (the library path:
  hashing, the conflict check, the transaction);
- `recgen import`: the CLI as a subprocess from a CSV file, wall clock including the
  interpreter's start (reading, checking every row against SendFeedback's rules and the
  serving catalog, writing);
- `ImportEvents`: a gRPC client streaming prepared messages of `--batch` rows to a real
  `recgen serve` on 127.0.0.1 (one worker, user cache on), from the call to the answer,
  which comes after the last commit.

Modes are interleaved, `--repeat` times (median reported), so machine noise hits all
alike; repeat k of every mode writes new event ids into a file that already holds k×N
rows. The gateway runs during all of them. Each file's row count is checked afterwards.

Models: `--models ROOT`; without it a tiny version (MovieLens-100K, 16 factors, no LLM,
no encoder: ~10 s) is exported into the work directory from the wheels in `--wheels`;
without those the ImportEvents and catalog checks are skipped, with a message.

    .venv/bin/python -m tools.import_bench [--events 100000] [--batch 5000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("VIEW", "CLICK", "PURCHASE", "RATE", "DISMISS")
TYPE_P = (0.5, 0.3, 0.08, 0.1, 0.02)
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z


def make_rows(n: int, items: list[str], seed: int = 0) -> list[tuple[str, str, str, float | None, float]]:
    """(user, item, type, value, ts) per event, ids assigned per repeat."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, max(1, n // 25), n)
    pop = 1.0 / (np.arange(len(items)) + 10.0)
    item_ix = rng.choice(len(items), n, p=pop / pop.sum())
    kinds = rng.choice(len(TYPES), n, p=TYPE_P)
    ratings = rng.integers(1, 6, n)
    out = []
    for i in range(n):
        kind = TYPES[kinds[i]]
        value = float(ratings[i]) if kind == "RATE" else None
        out.append((f"user{users[i]}", items[item_ix[i]], kind, value, float(T0 + i)))
    return out


def build_tiny_models(work: Path, wheels: Path) -> Path | None:
    if not (wheels / "recbole-1.2.1-py3-none-any.whl").is_file():
        return None
    from export.data import load_movielens100k
    from export.pipeline import export_version
    from recgen.config.export import ExportConfig

    root = work / "models"
    opts = ExportConfig(
        with_llm=False,
        with_encoder=False,
        with_context=False,
        factors=16,
        reg=0.1,
        alpha=2.0,
        iterations=6,
        progress=False,
        evaluate_ease=False,
        wheels_dir=wheels,
    )
    export_version(load_movielens100k(wheels), root, opts)
    return root


def serving_items(models: Path | None) -> list[str]:
    if models is None:
        return [str(i) for i in range(1, 1683)]  # MovieLens-100K's ids
    from recgen.repository import ModelRepository

    return [it.item_id for it in ModelRepository(models).open(None, verify=False).catalog()]


# ------------------------------------------------------------------ the four writers


def run_executemany(db: Path, events: list[Any], batch: int) -> tuple[float, float]:
    """(wall s, CPU s) of the baseline."""
    received = time.time()
    rows = [
        (e.event_id, e.user_id, e.item_id, e.type, e.value, e.ts, e.request_id, received, e.payload_hash())
        for e in events
    ]
    c = sqlite3.connect(str(db), isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    t, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(rows), batch):
        c.execute("BEGIN IMMEDIATE")
        c.executemany(
            "INSERT INTO events (event_id, user_id, item_id, type, value, ts, request_id, received_at,"
            " payload_hash) VALUES (?,?,?,?,?,?,?,?,?)",
            rows[i : i + batch],
        )
        c.execute("COMMIT")
    out = time.perf_counter() - t, time.process_time() - cpu
    c.close()
    return out


def run_store(db: Path, events: list[Any], batch: int) -> tuple[float, float]:
    from server.state import SQLiteStore

    store = SQLiteStore(db)
    try:
        t, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(events), batch):
            store.add_events_bulk_sync(events[i : i + batch])
        return time.perf_counter() - t, time.process_time() - cpu
    finally:
        store.close()


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cli(db: Path, csv_path: Path, batch: int, models: Path | None) -> tuple[float, float]:
    cmd = [
        sys.executable,
        "-m",
        "recgen.cli",
        "import",
        "--quiet",
        "--state",
        str(db),
        "--events",
        str(csv_path),
    ]
    cmd += ["--batch", str(batch)] + (["--models", str(models)] if models else [])
    t, cpu = time.perf_counter(), _children_cpu()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    dt, dcpu = time.perf_counter() - t, _children_cpu() - cpu
    if r.returncode != 0:
        raise RuntimeError(f"recgen import failed: {r.stderr[-2000:]}")
    return dt, dcpu


def _process_cpu(pid: int) -> float:
    """utime + stime of one running process (its worker children are not counted: idle here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_rpc(target: str, messages: list[Any], pid: int) -> tuple[float, float, Any]:
    """(wall s, CPU s of the gateway and of this client together, the response)."""
    import grpc

    from recgen.v1 import recommender_pb2_grpc as pbg

    with grpc.insecure_channel(target) as ch:
        stub = pbg.RecommenderStub(ch)
        t, cpu, server_cpu = time.perf_counter(), time.process_time(), _process_cpu(pid)
        resp = stub.ImportEvents(iter(messages), timeout=600)
        dt = time.perf_counter() - t
        return dt, time.process_time() - cpu + _process_cpu(pid) - server_cpu, resp


def start_gateway(models: Path, state: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "recgen.cli", "serve", "--models", str(models), "--port", "0"]
    cmd += ["--workers", "1", "--state", str(state)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"recgen serve exited with {proc.wait()}; see {log}")
        if line.startswith("recgen: serving on "):
            return proc, f"127.0.0.1:{line.rsplit(':', 1)[1].strip()}"
    proc.kill()
    raise TimeoutError("recgen serve did not start")


def count(db: Path) -> int:
    with sqlite3.connect(str(db)) as c:
        return int(c.execute("SELECT COUNT(*) FROM events").fetchone()[0])


# ------------------------------------------------------------------ main


def run(args: argparse.Namespace) -> dict[str, Any]:
    from recgen.v1 import recommender_pb2 as pb
    from server.state import Event, SQLiteStore

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="import-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    models = Path(args.models) if args.models else None
    note = ""
    if models is None:
        t = time.perf_counter()
        models = build_tiny_models(work, Path(args.wheels))
        if models is None:
            note = (
                f"no --models and no MovieLens wheel in {args.wheels}: ImportEvents and item checks skipped"
            )
            print(f"import_bench: {note}", file=sys.stderr)
        else:
            print(
                f"import_bench: built a tiny model version in {time.perf_counter() - t:.1f} s",
                file=sys.stderr,
            )
    items = serving_items(models)
    rows = make_rows(args.events, items, args.seed)

    dbs = {m: work / f"{m}.db" for m in ("executemany", "store", "cli", "rpc")}
    for db in dbs.values():
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        SQLiteStore(db).close()  # the schema
    gateway = None
    target = ""
    if models is not None:
        gateway, target = start_gateway(models, dbs["rpc"], work / "serve.log")
    times: dict[str, list[float]] = {m: [] for m in dbs}
    cpus: dict[str, list[float]] = {m: [] for m in dbs}
    load = [os.getloadavg()[0]]
    try:
        for rep in range(args.repeat):
            prefix = f"r{rep}-"
            events = [Event(f"{prefix}{i}", u, it, k, v, ts) for i, (u, it, k, v, ts) in enumerate(rows)]
            csv_path = work / f"events-{rep}.csv"
            with open(csv_path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["event_id", "user_id", "item_id", "type", "value", "timestamp"])
                for e in events:
                    w.writerow(
                        [e.event_id, e.user_id, e.item_id, e.type, "" if e.value is None else e.value, e.ts]
                    )
            messages = []
            for i in range(0, len(events), args.batch):
                part = []
                for e in events[i : i + args.batch]:
                    fe = pb.SendFeedbackRequest(
                        event_id=e.event_id,
                        user_id=e.user_id,
                        item_id=e.item_id,
                        type=pb.FeedbackType.Value("FEEDBACK_TYPE_" + e.type),
                        timestamp=datetime.fromtimestamp(e.ts, UTC).isoformat(),
                    )
                    if e.value is not None:
                        fe.value = e.value
                    part.append(fe)
                messages.append(pb.ImportEventsRequest(events=part))

            for mode, (dt, cpu) in (
                ("executemany", run_executemany(dbs["executemany"], events, args.batch)),
                ("store", run_store(dbs["store"], events, args.batch)),
                ("cli", run_cli(dbs["cli"], csv_path, args.batch, models)),
            ):
                times[mode].append(dt)
                cpus[mode].append(cpu)
            if gateway is not None:
                dt, cpu, resp = run_rpc(target, messages, gateway.pid)
                assert resp.stored == len(events) and resp.duplicates == 0, resp
                times["rpc"].append(dt)
                cpus["rpc"].append(cpu)
            load.append(os.getloadavg()[0])
            print(
                f"import_bench: repeat {rep + 1}/{args.repeat}: "
                + ", ".join(f"{m} {v[-1]:.2f} s" for m, v in times.items() if v),
                file=sys.stderr,
            )
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(30)
    n = args.events
    for m, db in dbs.items():
        if times[m]:
            assert count(db) == n * args.repeat, (m, count(db))
    base = statistics.median(times["executemany"])
    base_cpu = statistics.median(cpus["executemany"])
    results = {}
    for m, v in times.items():
        if not v:
            continue
        med, cpu = statistics.median(v), statistics.median(cpus[m])
        results[m] = {
            "seconds": [round(x, 3) for x in v],
            "cpu_seconds": [round(x, 3) for x in cpus[m]],
            "median_s": round(med, 3),
            "events_per_s": round(n / med),
            "vs_executemany": round(base / med, 3),
            "median_cpu_s": round(cpu, 3),
            "events_per_cpu_s": round(n / cpu),
            "cpu_vs_executemany": round(base_cpu / cpu, 3),
        }
    return {
        "command": "python -m tools.import_bench " + " ".join(sys.argv[1:]),
        "events": n,
        "batch": args.batch,
        "repeat": args.repeat,
        "models": str(models) if models else None,
        "note": note,
        "machine": {
            "nproc": os.cpu_count(),
            "python": sys.version.split()[0],
            "sqlite": sqlite3.sqlite_version,
        },
        "load_1min": [round(x, 2) for x in load],
        "results": results,
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


LABELS = {
    "executemany": "plain sqlite3 executemany (baseline)",
    "store": "SQLiteStore.add_events_bulk_sync",
    "cli": "recgen import (CLI, CSV, wall clock)",
    "rpc": "ImportEvents via recgen serve (loopback)",
}


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"| path ({doc['events']:,} events, {doc['batch']:,} per transaction) | median s | events/s "
        "| vs executemany | CPU s | events per CPU-s | vs executemany |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, r in doc["results"].items():
        lines.append(
            f"| {LABELS[m]} | {r['median_s']:.2f} | {r['events_per_s']:,} | {r['vs_executemany']:.2f}x "
            f"| {r['median_cpu_s']:.2f} | {r['events_per_cpu_s']:,} | {r['cpu_vs_executemany']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.import_bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=5000, help="rows per transaction / per ImportEvents message")
    p.add_argument("--repeat", type=int, default=5, help="interleaved rounds; the median is reported")
    p.add_argument(
        "--models", help="model repository for the gateway and the item check (default: a tiny one)"
    )
    p.add_argument("--wheels", default=".cache/wheels")
    p.add_argument("--work", default="", help="keep the databases, CSVs and the server log here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="write the results here too")
    args = p.parse_args(argv)
    doc = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(doc))
    print(f"load average (1 min) during the run: {doc['load_1min']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
