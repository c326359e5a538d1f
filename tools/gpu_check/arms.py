"""The timed arms: tokens/s and time to first token per batch size, for one engine each.

`generator_arm`: the worker's own `Generator` (continuous batching, worker/llm/engine.py)
on one ONNX Runtime session: CPU int8, CUDA without I/O binding, CUDA with it. A
batch of B is B requests submitted at once; tokens/s = B x new tokens / wall time
from the first submit to the last token (prefill included); TTFT = the requests'
mean time from submit to their first token. Each batch size runs once unmeasured
(2 new tokens: CUDA allocations and kernel choices for its shapes) before the
measured round.

`torch_arm`: transformers `generate` on the same weights, greedy, the same prompt
ids left-padded; tokens/s the same way; TTFT = the wall time of `generate` with
max_new_tokens=1 at that batch.

Every new-token count is forced: the speed-test llm.json's eos id is outside the
vocabulary (never produced), `generate` gets min_new_tokens. An arm that cannot run
here returns a result whose `skipped` says why; it never raises for that.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)

CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU = ("CPUExecutionProvider",)


@dataclass
class Point:
    batch: int
    new_tokens: int
    tokens: int
    seconds: float
    tokens_per_s: float
    ttft_s: float

    @staticmethod
    def of(batch: int, new: int, tokens: int, seconds: float, ttft: float) -> Point:
        return Point(batch, new, tokens, round(seconds, 4), round(tokens / seconds, 2), round(ttft, 4))


@dataclass
class Arm:
    name: str
    skipped: str | None = None  # why it did not run; None when it ran
    points: list[Point] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # providers, binding, versions, load time

    def at(self, batch: int) -> Point | None:
        return next((p for p in self.points if p.batch == batch), None)


def binding_supported() -> bool:
    """Whether this tree's Generator takes `io_binding` (the I/O-binding decode)."""
    from worker.llm.engine import Generator

    return "io_binding" in inspect.signature(Generator.__init__).parameters


def cuda_provider_reason() -> str | None:
    """None when ONNX Runtime here has the CUDA provider, else the message an arm reports."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (
            f"no CUDAExecutionProvider in this onnxruntime ({ort.__version__}, providers: "
            f"{', '.join(ort.get_available_providers())})"
        )
    return None


async def _round(gen: Any, prompts: Sequence[str], new: int) -> tuple[int, float, float]:
    t0 = time.perf_counter()
    handles = [gen.submit(p, max_new_tokens=new) for p in prompts]
    finals = await asyncio.gather(*(h.result() for h in handles))
    seconds = time.perf_counter() - t0
    bad = [f for _, f in finals if f.reason.value != "length" or f.tokens != new]
    if bad:
        raise RuntimeError(f"expected {new} tokens per request (length), got {bad[:3]}")
    ttft = float(np.mean([h.first_token_at - h.submitted_at for h in handles]))
    return sum(len(h.token_ids) for h in handles), seconds, ttft


def generator_arm(
    name: str,
    llm_dir: Path,
    *,
    providers: Sequence[str],
    io_binding: bool | None,
    threads: int,
    prompts: Sequence[str],
    batches: Sequence[int],
    new_tokens: int,
    prompt_tokens: int,
) -> Arm:
    from worker.llm.engine import Generator

    arm = Arm(name)
    if providers[0] == "CUDAExecutionProvider" and (why := cuda_provider_reason()):
        arm.skipped = why
        return arm
    kw: dict[str, Any] = {}
    if io_binding is not None:
        if not binding_supported():
            arm.skipped = (
                "not available: worker.llm.engine.Generator has no io_binding parameter "
                "(the I/O-binding decode has not landed in this tree)"
            )
            if not io_binding:  # today's loop *is* the unbound one: measure it as such
                arm.skipped = None
                arm.info["io_binding_requested"] = "n/a (Generator without the parameter: numpy feeds)"
            else:
                return arm
        else:
            kw["io_binding"] = io_binding
    top = max(batches)
    t = time.perf_counter()
    gen = Generator(
        llm_dir,
        threads=threads,
        providers=tuple(providers),
        max_seqs=top,
        max_batch_tokens=top * (prompt_tokens + new_tokens + 8),
        # One prefill call per batch: the figure is the batch's, as `generate` gets it.
        max_prefill_tokens=top * (prompt_tokens + 8),
        max_queue=4 * top,
        **kw,
    )
    arm.info["load_s"] = round(time.perf_counter() - t, 2)
    arm.info["session_providers"] = gen.session.get_providers()
    arm.info["io_binding"] = getattr(gen.model, "io_binding", None)
    arm.info["threads"] = threads
    if providers[0] == "CUDAExecutionProvider" and gen.session.get_providers()[0] != providers[0]:
        raise RuntimeError(f"{name}: CUDA did not load; session providers {gen.session.get_providers()}")

    async def run_all() -> None:
        for b in batches:
            await _round(gen, prompts[:b], 2)  # unmeasured: first shapes of this batch
            tokens, secs, ttft = await _round(gen, prompts[:b], new_tokens)
            arm.points.append(Point.of(b, new_tokens, tokens, secs, ttft))
            LOG.info("%s batch %d: %.1f tokens/s, TTFT %.3f s", name, b, tokens / secs, ttft)

    with gen:
        asyncio.run(run_all())
    return arm


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


def torch_arm(
    name: str,
    hf: Any,
    *,
    device: str,
    prompt_ids: Sequence[Sequence[int]],
    batches: Sequence[int],
    new_tokens: int,
    pad_id: int,
    threads: int,
) -> Arm:
    import torch

    arm = Arm(name)
    if device == "cuda" and not torch.cuda.is_available():
        arm.skipped = f"torch.cuda.is_available() is False (torch {torch.__version__})"
        return arm
    torch.set_num_threads(threads)
    model = hf.to(device)
    arm.info.update(
        torch=torch.__version__, device=device, dtype="float32", tf32=torch.backends.cuda.matmul.allow_tf32
    )
    if device == "cuda":
        arm.info["gpu"] = torch.cuda.get_device_name(0)

    def generate(b: int, new: int) -> tuple[Any, float]:
        ids, mask = left_pad(prompt_ids[:b], pad_id)
        kw = dict(
            input_ids=torch.from_numpy(ids).to(device),
            attention_mask=torch.from_numpy(mask).to(device),
            max_new_tokens=new,
            min_new_tokens=new,  # eos suppressed: every row makes `new` tokens
            do_sample=False,
            pad_token_id=pad_id,
        )
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**kw)
        if device == "cuda":
            torch.cuda.synchronize()
        return out[:, ids.shape[1] :], time.perf_counter() - t

    try:
        for b in batches:
            generate(b, 2)  # unmeasured
            _, ttft = generate(b, 1)
            out, secs = generate(b, new_tokens)
            if out.shape != (b, new_tokens):
                raise RuntimeError(f"generate gave {tuple(out.shape)}, expected {(b, new_tokens)}")
            arm.points.append(Point.of(b, new_tokens, b * new_tokens, secs, ttft))
            if b == 1:
                arm.info["greedy_batch1"] = out[0].tolist()
    finally:
        hf.to("cpu")
        if device == "cuda":
            torch.cuda.empty_cache()
    return arm
