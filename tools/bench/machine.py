"""The machine a bench ran on: hardware and versions, GPU presence, and its load average over
the run (a shared machine). Reads only."""

from __future__ import annotations

import os
import platform
import shutil
import threading
import time
from pathlib import Path
from typing import Any

NO_GPU = "no CUDA device / onnxruntime-gpu: GPU rows skipped"


class LoadSampler:
    """The 1-minute load average every few seconds while the benchmark runs (a shared machine)."""

    def __init__(self, every: float = 5.0) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._every = every
        self._t0 = time.time()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((round(time.time() - self._t0, 1), os.getloadavg()[0]))
            self._stop.wait(self._every)

    def start(self) -> LoadSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=1)
        loads = [v for _, v in self.samples] or [os.getloadavg()[0]]
        return {
            "min": round(min(loads), 2),
            "mean": round(sum(loads) / len(loads), 2),
            "max": round(max(loads), 2),
            "samples": [(t, round(v, 2)) for t, v in self.samples],
        }

    def between(self, t0: float, t1: float) -> dict[str, float]:
        vals = [v for t, v in self.samples if t0 - self._t0 <= t <= t1 - self._t0] or [os.getloadavg()[0]]
        return {
            "min": round(min(vals), 2),
            "mean": round(sum(vals) / len(vals), 2),
            "max": round(max(vals), 2),
        }


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    except (OSError, IndexError, ValueError):
        pass
    versions = {}
    for mod in ("onnxruntime", "faiss", "grpc", "numpy", "tokenizers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a version string is informational
            versions[mod] = "?"
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "mem_total_gb": round(mem_kb / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def gpu_status() -> dict[str, Any]:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    has_smi = shutil.which("nvidia-smi") is not None
    cuda = "CUDAExecutionProvider" in providers and has_smi
    return {"ort_providers": providers, "nvidia_smi": has_smi, "cuda": cuda, "note": "" if cuda else NO_GPU}
