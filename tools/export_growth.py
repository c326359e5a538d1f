"""The export at real sizes: wall time and peak memory of `recgen export` as the log grows.

For each size N (default 100K, 1M, 10M interactions), writes a synthetic log
with a long tail (`tools/synthetic_interactions.py`: N/100 users, N/60 items,
Zipf items, log-normal activity) and runs the real command a user runs,

    recgen export --models TMP --interactions … --items … --no-llm --no-encoder --quiet

in its own process, measuring its wall time and its peak resident memory
(`ru_maxrss` of that one child). Prints a table and the growth exponents
(log-log slope between consecutive sizes; the issue's goals are judged from
1M to 10M: wall ≤ 1.15, memory ≤ 1.0; 10M in ≤ 15 min with ≤ 8 GB).
One run per size, sizes in one run. Nothing is served; no network.

    python -m tools.export_growth [--sizes 100000,1000000,10000000] [--json F] [-- EXTRA EXPORT ARGS]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[1:])
wall = time.perf_counter() - t
print(f"{rc} {wall} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
"""


def run_measured(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """(return code, wall seconds, peak RSS in GiB) of one command, in a fresh wrapper process
    whose only child is the command (so RUSAGE_CHILDREN is that command's peak)."""
    with open(log, "w") as f:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, *cmd], stdout=subprocess.PIPE, stderr=f, text=True, check=False
        )
    rc, wall, kb = out.stdout.strip().splitlines()[-1].split()
    return int(rc), float(wall), int(kb) / 2**20


def export_once(rows: int, work: Path, extra: list[str]) -> dict[str, float | int | str]:
    data = work / f"data-{rows}"
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tools.synthetic_interactions", "--rows", str(rows), "--out", str(data)],
        check=True,
        capture_output=True,
    )
    gen_s = time.perf_counter() - t
    models = work / f"models-{rows}"
    cmd = [sys.executable, "-m", "recgen.cli", "export", "--models", str(models)]
    cmd += ["--interactions", str(data / "interactions.csv"), "--items", str(data / "items.csv")]
    cmd += ["--no-llm", "--no-encoder", "--quiet", "--force", *extra]
    log = work / f"export-{rows}.log"
    rc, wall, peak = run_measured(cmd, log)
    row: dict[str, float | int | str] = {"rows": rows, "generate_s": round(gen_s, 1), "rc": rc}
    row.update({"wall_s": round(wall, 1), "peak_rss_gib": round(peak, 2)})
    if rc != 0:
        row["error"] = log.read_text()[-2000:]
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(models, ignore_errors=True)
    return row


def exponents(rows: list[dict], key: str) -> list[float]:
    ok = [r for r in rows if r["rc"] == 0]
    return [
        round(math.log(b[key] / a[key]) / math.log(b["rows"] / a["rows"]), 3)
        for a, b in zip(ok, ok[1:], strict=False)
        if a[key] > 0 and b[key] > 0
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--json", type=Path)
    ap.add_argument("extra", nargs="*", help="further `recgen export` flags (after --)")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="recgen-growth-") as tmp:
        for n in sizes:
            rows.append(export_once(n, Path(tmp), args.extra))
            r = rows[-1]
            print(f"{n:>11,} rows: rc {r['rc']}, {r['wall_s']} s, peak {r['peak_rss_gib']} GiB", flush=True)
    growth = {"wall_s": exponents(rows, "wall_s"), "peak_rss_gib": exponents(rows, "peak_rss_gib")}
    print(f"{'rows':>12} {'wall (s)':>10} {'peak RSS (GiB)':>15}")
    for r in rows:
        print(f"{r['rows']:>12,} {r['wall_s']:>10} {r['peak_rss_gib']:>15}")
    print("growth exponents between consecutive sizes:", growth)
    result = {
        "command": "python -m tools.export_growth " + " ".join(argv or sys.argv[1:]),
        "cpus": os.cpu_count(),
        "load_avg_end": os.getloadavg(),
        "rows": rows,
        "growth": growth,
        "self_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
