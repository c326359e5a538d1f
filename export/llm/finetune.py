"""LoRA fine-tuning of a causal LM on catalog-built examples -> a merged HF checkpoint.

`finetune(hf_dir, examples, out_dir, cfg)` trains LoRA adapters (peft, every
linear layer but the LM head) for a fixed number of steps with a fixed seed,
merges them into the weights and saves a plain Hugging Face folder (weights,
tokenizer, generation config) that export/llm/onnx_export.py exports as any
other source. The loss is on the target only (the prompt is context), the
target ends with the model's end-of-turn token, and logits are computed for
the target positions only (`logits_to_keep`; the LM head of a 49k vocabulary
is a fifth of a 135M model's work).

Batches are left-padded like the worker's (position ids = cumsum(mask) - 1).
The returned record (steps, examples, tokens, seconds, loss curve) goes into
llm.json. This module builds no examples (export/llm/examples.py does) and
exports nothing.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from export.llm.examples import Example

LOG = logging.getLogger(__name__)

__all__ = ["FinetuneConfig", "default_threads", "finetune", "end_of_turn_id", "example_loss"]

_SENTINEL = "\u2063RECGEN_ANSWER\u2063"
CURVE_POINTS = 20  # loss values kept in the record, evenly spaced over the steps


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int  # optimizer steps; examples used = steps * batch_size, each seen once
    batch_size: int = 4
    lr: float = 1e-3  # peak; linear warmup over the first 10% of steps, cosine to 10% after
    rank: int = 16  # LoRA rank; alpha = 2 * rank
    seed: int = 0
    threads: int | None = None  # torch threads; None: `default_threads()`
    max_tokens: int = 384  # longer examples are dropped (a guard, not a budget)


def default_threads() -> int:
    """The machine's cores, or 1 when it is busy (load average over the cores): on a
    shared 2-core machine (load ~8) a step took >70 s with 2 torch threads, 10.7 s with 1."""
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores else cores


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn: the chat template's, else the eos token."""
    template = getattr(tokenizer, "chat_template", None)
    if template:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False
        )
        after = tokenizer(rendered.split(_SENTINEL, 1)[1], add_special_tokens=False)["input_ids"]
        if after and tokenizer.convert_ids_to_tokens(after[0]) in tokenizer.get_added_vocab():
            return int(after[0])  # "<|im_end|>" in ChatML, "</s>" in Llama 2's
    assert tokenizer.eos_token_id is not None, "the model declares no end token"
    return int(tokenizer.eos_token_id)


def _encode(
    tokenizer, examples: Sequence[Example], end_id: int, max_tokens: int
) -> list[tuple[list[int], int]]:
    """(prompt + target ids, target length) per example; encoded apart, as the worker generates."""
    out = []
    for ex in examples:
        prompt = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        target = tokenizer(ex.target, add_special_tokens=False)["input_ids"] + [end_id]
        if len(prompt) + len(target) <= max_tokens:
            out.append((prompt + target, len(target)))
    if len(out) < len(examples):
        LOG.warning("finetune: %d examples over %d tokens dropped", len(examples) - len(out), max_tokens)
    return out


def _batch_loss(model, rows: Sequence[tuple[list[int], int]], pad_id: int):
    """Mean cross-entropy over the target tokens of left-padded rows."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    keep = max(n for _, n in rows) + 1  # logits for the last `keep` positions predict every target
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), keep - 1), -100, dtype=torch.long)
    for b, (row, n) in enumerate(rows):
        ids[b, width - len(row) :] = torch.tensor(row)
        mask[b, width - len(row) :] = 1
        labels[b, keep - 1 - n :] = torch.tensor(row[-n:])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
    logits = logits[:, :-1]  # (B, keep-1, V): position t predicts token t+1
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    return loss, int(mask.sum()), int((labels >= 0).sum())


def _lr_factor(step: int, steps: int) -> float:
    warmup = max(1, steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


def finetune(
    hf_dir: Path, examples: Sequence[Example], out_dir: Path, cfg: FinetuneConfig, *, progress: bool = True
) -> dict[str, Any]:
    """Train LoRA on `examples`, merge, save to `out_dir`; returns the record for llm.json."""
    assert cfg.steps > 0 and cfg.batch_size > 0, cfg
    assert len(examples) >= cfg.steps * cfg.batch_size, (len(examples), cfg.steps * cfg.batch_size)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(cfg.seed)
    threads_before = torch.get_num_threads()
    threads = cfg.threads or default_threads()
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=False)
    end_id = end_of_turn_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    rows = _encode(tokenizer, examples[: cfg.steps * cfg.batch_size], end_id, cfg.max_tokens)
    base = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=False, dtype=torch.float32)
    lora = LoraConfig(
        r=cfg.rank, lora_alpha=2 * cfg.rank, lora_dropout=0.0, target_modules="all-linear", bias="none"
    )
    model = get_peft_model(base, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    LOG.info(
        "finetune: LoRA r=%d on %s, %d trainable of %d parameters, %d steps x %d examples",
        cfg.rank,
        base.config.model_type,
        sum(p.numel() for p in params),
        sum(p.numel() for p in model.parameters()),
        cfg.steps,
        cfg.batch_size,
    )
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg.steps))
    model.train()
    losses: list[float] = []
    tokens = target_tokens = 0
    steps = range(cfg.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="LLM fine-tune", unit="step", disable=None)
    t0 = time.perf_counter()
    try:
        for step in steps:
            batch = rows[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            if not batch:
                break
            loss, n_tok, n_target = _batch_loss(model, batch, pad_id)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            tokens += n_tok
            target_tokens += n_target
            if progress:
                steps.set_postfix(loss=f"{losses[-1]:.3f}")  # type: ignore[attr-defined]
        seconds = time.perf_counter() - t0
        merged: Any = model.merge_and_unload()
        merged.eval()
        out_dir = Path(out_dir)
        merged.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        if (Path(hf_dir) / "generation_config.json").is_file() and not (
            out_dir / "generation_config.json"
        ).is_file():
            shutil.copyfile(Path(hf_dir) / "generation_config.json", out_dir / "generation_config.json")
    finally:
        torch.set_num_threads(threads_before)
    tail = max(1, len(losses) // 10)
    record = {
        "method": "lora-merged",
        **{k: v for k, v in asdict(cfg).items() if k != "threads"},
        "threads": threads,
        "examples": len(rows[: len(losses) * cfg.batch_size]),
        "tokens": tokens,
        "target_tokens": target_tokens,
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(1, len(losses)), 2),
        "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
        "loss_first": round(losses[0], 4),
        "loss_last": round(sum(losses[-tail:]) / tail, 4),  # mean of the last 10% of steps
        "loss_curve": [round(losses[i], 4) for i in _curve_steps(len(losses))],
        "end_token_id": end_id,
    }
    LOG.info(
        "finetune: %d steps, %d tokens in %.0f s (%.1f tokens/s, %.2f s/step), loss %.3f -> %.3f",
        len(losses),
        tokens,
        seconds,
        record["tokens_per_s"],
        record["seconds_per_step"],
        record["loss_first"],
        record["loss_last"],
    )
    return record


def _curve_steps(n: int) -> list[int]:
    if n <= CURVE_POINTS:
        return list(range(n))
    return sorted({round(i * (n - 1) / (CURVE_POINTS - 1)) for i in range(CURVE_POINTS)})


def example_loss(hf_dir: Path, examples: Sequence[Example], batch_size: int = 8) -> float:
    """Mean target cross-entropy of a checkpoint on examples (no training)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=False)
    end_id = end_of_turn_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    rows = _encode(tokenizer, examples, end_id, 10**9)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=False).eval()
    total = count = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            loss, _, n = _batch_loss(model, rows[i : i + batch_size], pad_id)
            total += float(loss) * n
            count += n
    return total / count
