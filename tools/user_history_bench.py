"""What version-held user histories cost a worker as the user count grows.

For 1K, 100K and 1M synthetic users (lognormal activity, mean ~20 events,
Zipf-like items), writes `users/` with the export's own writer, then in a
fresh process measures what a worker pays: the time to open the arrays, the
resident memory they add after opening and after 10,000 lookups, and the
time of one lookup (history + seen set). Prints a table and the growth
exponents (log-log slope from the smallest to the largest size); --json
writes the figures. Loopback-free: no server is started.

    python -m tools.user_history_bench [--users 1000,100000,1000000] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recgen.core.user_history import write_user_histories


def synthetic(n_users: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = np.maximum(1, rng.lognormal(2.5, 1.0, n_users).astype(np.int64))  # mean ~20
    user = np.repeat(np.arange(n_users), counts)
    n_items = max(100, n_users // 2)
    item = np.minimum(rng.zipf(1.3, user.size) - 1, n_items - 1)
    ts = 883_612_800.0 + rng.uniform(0, 2e7, user.size)
    return [f"user-{u}" for u in range(n_users)], user, item, ts


_PROBE = r"""
import json, resource, sys, time
import numpy as np
from recgen.core.user_history import UserHistories

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
base = rss_mb()
t = time.perf_counter()
h = UserHistories(sys.argv[1])
opened = time.perf_counter() - t
after_open = rss_mb() - base
rng = np.random.default_rng(1)
names = [f"user-{u}" for u in rng.integers(0, len(h), 10000)]
t = time.perf_counter()
for n in names:
    got = h.get(n)
    assert got.rows.size > 0
lookup = (time.perf_counter() - t) / len(names)
rss = rss_mb() - base
print(json.dumps({"open_s": opened, "rss_open_mb": after_open, "rss_10k_mb": rss, "lookup_us": lookup * 1e6}))
"""


def measure(n_users: int, root: Path) -> dict[str, float]:
    names, user, item, ts = synthetic(n_users)
    d = root / f"users-{n_users}"
    t = time.perf_counter()
    counts = write_user_histories(d, names, user, item, ts).counts()
    write_s = time.perf_counter() - t
    size_mb = sum(f.stat().st_size for f in d.iterdir()) / 2**20
    out = subprocess.run([sys.executable, "-c", _PROBE, str(d)], capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "users": n_users,
        "events": int(user.size),
        **counts,
        "write_s": write_s,
        "files_mb": size_mb,
        **probe,
    }


def slope(rows: list[dict[str, float]], key: str) -> float:
    a, b = rows[0], rows[-1]
    lo, hi = max(a[key], 1e-9), max(b[key], 1e-9)
    return math.log(hi / lo) / math.log(b["users"] / a["users"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", default="1000,100000,1000000")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.users.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, Path(tmp)) for n in sizes]
    cols = ("users", "events", "write_s", "files_mb", "open_s", "rss_open_mb", "rss_10k_mb", "lookup_us")
    print(" ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print(" ".join(f"{r[c]:>12.4g}" if isinstance(r[c], float) else f"{r[c]:>12}" for c in cols))
    growth = {
        k: round(slope(rows, k), 3) for k in ("write_s", "files_mb", "open_s", "rss_10k_mb", "lookup_us")
    }
    print("growth exponents (log-log, smallest to largest):", growth)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "growth": growth}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
