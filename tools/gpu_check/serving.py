"""A short Recommend load test of a real `recgen serve --device DEVICE` with the speed-test LLM.

The model version is assembled, not exported: the MF half (item factors, FAISS
index, scorer, catalog, user histories) comes from a small version built
beforehand on any CPU machine (`make gpu-check-base`: MovieLens-100K, 16 factors,
no LLM, ~2 MB, so it travels to the GPU machine in one piece), and the
speed-test model's llm/ (fp32: CUDA runs fp32; its llm.json stops at <|im_end|>
like a real one) is added beside it through VersionWriter, checksummed like an
export. Then one gateway with one worker on 127.0.0.1 and `python -m tools.loadtest
--target` against it: closed loop, a share of explain=true requests (text written
by the LLM on DEVICE). Loopback only, bounded in time.

This module does not build the LLM (model.py) and measures nothing itself.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from recgen.core.formats import LLM_DIR
from recgen.repository import MANIFEST, ModelRepository, VersionWriter

LOG = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / ".cache" / "gpu-check" / "base"  # `make gpu-check-base` writes it


def assemble(base_root: Path, llm_dir: Path, out_root: Path) -> str:
    """A new repository at out_root: base_root's serving version plus `llm_dir` as llm/."""
    src = ModelRepository(base_root).open(None, verify=True)
    with VersionWriter(out_root, src.name + "-gpucheck") as w:
        for p in src.path.iterdir():
            if p.name == MANIFEST or p.name == LLM_DIR:
                continue
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, w.path / p.name)
        (w.path / LLM_DIR).mkdir()
        for p in llm_dir.iterdir():
            try:
                (w.path / LLM_DIR / p.name).hardlink_to(p.resolve())
            except OSError:
                shutil.copyfile(p, w.path / LLM_DIR / p.name)
        m = src.manifest
        w.commit(type(m)(m.version, m.created_at, m.dataset, m.dims, m.metrics, m.params))
    return w.version


def loadtest(
    *,
    device: str,
    llm_dir: Path,
    work: Path,
    threads: int,
    concurrency: int,
    duration: float,
    explain_share: float,
    base_root: Path = BASE,
) -> dict[str, Any]:
    """{"skipped": why} or the load test's figures (throughput, latency, status counts, device)."""
    from tools.harness.procs import Gateway

    if not ModelRepository(base_root).versions():
        return {"skipped": f"no base model version in {base_root}: run `make gpu-check-base` on any machine"}
    if device == "cuda":
        from tools.gpu_check.arms import cuda_provider_reason

        if why := cuda_provider_reason():
            return {"skipped": why}
    root = work / "models"
    shutil.rmtree(root, ignore_errors=True)
    version = assemble(base_root, llm_dir, root)
    out = work / "loadtest.json"
    logs = work / "serve-logs"
    logs.mkdir(parents=True, exist_ok=True)
    extra = ["--workers", "1", "--device", device, "--threads", str(threads), "--version", version]
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recgen-gpucheck-") as tmp:
        with Gateway(root, Path(tmp) / "state.db", *extra, host="127.0.0.1", log_dir=logs) as gw:
            ready_s = time.perf_counter() - t
            cmd = [
                sys.executable,
                "-m",
                "tools.loadtest",
                "--target",
                gw.target,
                "--name",
                f"recgen-{device}",
            ]
            cmd += ["--concurrency", str(concurrency), "--duration", str(duration), "--warmup", "2"]
            cmd += [
                "--explain-share",
                str(explain_share),
                "--timeout",
                "5",
                "--text-timeout",
                "30",
                "--json",
                str(out),
            ]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=duration + 120)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(
            f"tools.loadtest exited {proc.returncode}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    report = json.loads(out.read_text())["reports"][0]
    if report["ok"] == 0:
        raise RuntimeError(
            f"the load test got no OK answer: {report['status_counts']} {report['error_examples']}"
        )
    return {
        "device": device,
        "version": version,
        "gateway_ready_s": round(ready_s, 2),
        "concurrency": concurrency,
        "duration_s": duration,
        "requests": report["requests"],
        "ok": report["ok"],
        "errors": report["errors"],
        "throughput_ok_per_s": report["throughput"],
        "latency_ms": report["latency_ms"],
        "status_counts": report["status_counts"],
        "kinds": report["kinds"],
        "error_examples": report.get("error_examples", {}),
        "json": str(out),
    }
