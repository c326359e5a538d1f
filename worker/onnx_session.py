"""One ONNX Runtime session wrapper: explicit providers, threads, inputs checked.

Input names and types are read from the session once; `run` checks that
every input is fed, with an error naming the missing one, instead of ONNX
Runtime's generic message deep in a batch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

LOG = logging.getLogger(__name__)


class DeviceUnavailable(RuntimeError):
    """--device cuda asked for, but this onnxruntime has no CUDA provider."""


def providers_for(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise DeviceUnavailable(
                "--device cuda: this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}). Install onnxruntime-gpu in place of "
                "onnxruntime (see docs/gpu.md)."
            )
        # onnxruntime-gpu from pip finds the CUDA and cuDNN libraries of the nvidia-* wheels
        # (its [cuda,cudnn] extras, or PyTorch's) only once they are loaded: without this the
        # CUDA provider fails to load and ONNX Runtime silently runs on the CPU.
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            try:
                preload()
            except Exception as e:  # a partial CUDA install: the session's own check reports it
                LOG.warning("onnxruntime.preload_dlls failed: %s", e)
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1  # one graph at a time per session: no nested pools
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


class OnnxModel:
    def __init__(self, path: Path, *, threads: int, providers: list[str]) -> None:
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=providers
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if providers[0] != "CPUExecutionProvider" and self.session.get_providers()[0] != providers[0]:
            # ONNX Runtime falls back to CPU silently; say so loudly.
            raise DeviceUnavailable(
                f"{path}: {providers[0]} did not load (session providers: {self.session.get_providers()})"
            )

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.path.name}: missing input(s) {missing}")
        return self.session.run(self.output_names, feeds)
