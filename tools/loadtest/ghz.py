"""ghz as the load tool (plain Recommend only; ghz is not installable on these machines, so this
stays small): its command line, and its JSON summary mapped to a Report."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
from typing import Any

from tools.harness.percentiles import QUANTILES
from tools.harness.procs import ROOT
from tools.loadtest.config import KINDS, LoadConfig, channel_count
from tools.loadtest.report import KindStats, Report

LOG = logging.getLogger(__name__)


def _upper_snake(code: str) -> str:
    return "OK" if code.upper() == "OK" else re.sub(r"(?<!^)(?=[A-Z])", "_", code).upper()


def report_from_ghz(doc: dict[str, Any], cfg: LoadConfig) -> Report:
    """Map ghz's `--format json` summary to a Report (ghz gives no p99.9; its open loop is not
    corrected for coordinated omission: it times from the actual send)."""
    codes = {_upper_snake(k): int(v) for k, v in (doc.get("statusCodeDistribution") or {}).items()}
    elapsed = float(doc.get("total", 0)) / 1e9
    ok = codes.get("OK", 0)
    dist = {int(d["percentage"]): float(d["latency"]) / 1e6 for d in doc.get("latencyDistribution") or []}
    lat = {k: round(dist[int(q)], 3) for k, q in QUANTILES if q == int(q) and int(q) in dist} or None
    if lat is not None:
        lat["mean"] = round(float(doc.get("average", 0)) / 1e6, 3)
        lat["max"] = round(float(doc.get("slowest", 0)) / 1e6, 3)
    requests = sum(codes.values())
    kinds = {k: KindStats(0, 0, {}, None) for k in KINDS}
    kinds["recommend"] = KindStats(requests, ok, codes, lat)
    return Report(
        name=cfg.name or cfg.target,
        target=cfg.target,
        mode=cfg.mode,
        concurrency=cfg.concurrency if cfg.mode == "closed" else None,
        rate=cfg.rate,
        tool="ghz",
        elapsed_s=round(elapsed, 4),
        requests=requests,
        sent=requests,
        expired_before_send=0,
        ok=ok,
        errors=requests - ok,
        throughput=round(ok / elapsed, 2) if elapsed else 0.0,
        status_counts=codes,
        latency_ms=lat,
        kinds=kinds,
    )


def ghz_can_run(cfg: LoadConfig) -> bool:
    if shutil.which("ghz") is None:
        LOG.warning("--tool ghz: ghz is not on PATH; using the own generator")
        return False
    if cfg.explain_share or cfg.stream_share or cfg.feedback_share or cfg.warmup:
        LOG.warning("--tool ghz runs plain Recommend without warmup only; using the own generator")
        return False
    return True


def run_ghz(cfg: LoadConfig) -> Report:
    exe = shutil.which("ghz")
    assert exe is not None
    data = {"user_id": f"load-user-{{{{randomInt 0 {cfg.users}}}}}", "k": cfg.k}
    cmd = [
        exe,
        "--insecure",
        "--import-paths",
        str(ROOT / "protos"),
        "--proto",
        "recgen/v1/recommender.proto",
        "--call",
        "recgen.v1.Recommender.Recommend",
        "-d",
        json.dumps(data),
        "--format",
        "json",
        "--timeout",
        f"{cfg.timeout}s",
        "--connections",
        str(channel_count(cfg)),
    ]
    if cfg.mode == "open":
        cmd += ["--rps", str(math.ceil(cfg.rate or 1)), "-c", str(cfg.max_outstanding)]
    else:
        cmd += ["-c", str(cfg.concurrency)]
    cmd += ["-z", f"{cfg.duration}s"] if cfg.duration else ["-n", str(cfg.max_requests)]
    cmd.append(cfg.target)
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=(cfg.duration or 600) + cfg.timeout + 60
    )
    return report_from_ghz(json.loads(out.stdout), cfg)
