"""Where the CUDA 13 libraries are, so that onnxruntime-gpu's CUDA provider can load them.

On the GPU machines (and with `pip install torch` anywhere) libcublas.so.13,
libcudart.so.13, cuDNN 9 ... live in PyTorch's packages, site-packages/nvidia/*/lib,
not on the loader's path. ONNX Runtime's CUDA provider then fails to load and the
session falls back to CPU. Two remedies, both applied by gpu_check:

- in this process: `onnxruntime.preload_dlls()` (onnxruntime-gpu >= 1.21) loads them
  from those folders before the first CUDA session;
- in child processes (`recgen serve` and its workers): LD_LIBRARY_PATH lists the
  folders (read by the loader when a process starts, so set before spawning).

`python -m tools.gpu_check.cuda_env` prints the LD_LIBRARY_PATH value, for a manual
`recgen serve --device cuda` (docs/gpu.md). Standard library only.
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path
from typing import Any


def nvidia_lib_dirs() -> list[str]:
    """Every site-packages/nvidia/*/lib folder on this interpreter's path (sorted, unique)."""
    roots = [*sys.path, *site.getsitepackages(), site.getusersitepackages()]
    found: set[str] = set()
    for r in roots:
        base = Path(r) / "nvidia"
        if base.is_dir():
            found.update(str(p) for p in base.glob("*/lib") if p.is_dir())
            found.update(str(p) for p in base.glob("cu*/lib") if p.is_dir())
    return sorted(found)


def library_path() -> str:
    parts = [*nvidia_lib_dirs(), *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep))]
    return os.pathsep.join(dict.fromkeys(parts))


def prepare() -> dict[str, Any]:
    """Set LD_LIBRARY_PATH for children and preload the CUDA libraries here; what was done."""
    info: dict[str, Any] = {"nvidia_lib_dirs": nvidia_lib_dirs()}
    os.environ["LD_LIBRARY_PATH"] = library_path()
    try:
        import onnxruntime as ort
    except ImportError as e:  # reported by the caller's own checks
        info["preload"] = f"onnxruntime not importable: {e}"
        return info
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        info["preload"] = "skipped: no CUDAExecutionProvider"
    elif hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # cuda and cudnn from site-packages/nvidia, else the default search
            info["preload"] = "onnxruntime.preload_dlls()"
        except Exception as e:  # a missing library shows again, precisely, at session creation
            info["preload"] = f"onnxruntime.preload_dlls() failed: {e}"
    else:
        info["preload"] = f"onnxruntime {ort.__version__} has no preload_dlls"
    return info


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(
        prog="python -m tools.gpu_check.cuda_env",
        description="Print an LD_LIBRARY_PATH value with every site-packages/nvidia/*/lib folder first.",
    ).parse_args()
    print(library_path())
