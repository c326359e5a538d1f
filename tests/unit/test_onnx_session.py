"""ONNX Runtime sessions: explicit providers, a clear error for a missing GPU."""

from pathlib import Path

import onnxruntime as ort
import pytest

from export.scorer_onnx import export_scorer
from worker.onnx_session import DeviceUnavailable, OnnxModel, providers_for


def test_cuda_without_onnxruntime_gpu_says_so() -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(DeviceUnavailable, match="onnxruntime-gpu"):
        providers_for("cuda")
    assert providers_for("cpu") == ["CPUExecutionProvider"]


def test_missing_input_is_named(tmp_path: Path) -> None:
    export_scorer(4, tmp_path / "s.onnx")
    m = OnnxModel(tmp_path / "s.onnx", threads=1, providers=["CPUExecutionProvider"])
    assert m.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ValueError, match=r"missing input\(s\) \['item_vectors'\]"):
        m.run({"user_vectors": None})  # type: ignore[dict-item]
