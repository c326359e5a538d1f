"""Greedy tokens on CUDA against CPU, fp32, the same graph: does the CUDA run compute the same model?

Tolerance policy. GPU and CPU kernels sum in different orders, so fp32 logits
differ in the last bits (TF32 is switched off for this check: `use_tf32=0`; the
timed arms keep ONNX Runtime's default). A greedy step can only flip where the
top two logits are that close, and after a flip the sequences legitimately part
ways. So, per prompt: the tokens agree up to the first divergence, and a
divergence is accepted only as a near-tie, where the CPU's top-1 minus top-2
logit is below `TIE` (5e-3; the logits of this random model have a standard
deviation of ~2.4). Besides, the first step's logits (the prefill's) must agree
within `LOGIT_TOL` (1e-2). The check passes when both hold for every prompt.
Anything else is a real difference.

Runs a plain unbatched greedy loop with numpy feeds, one prompt at a time:
this checks the device's arithmetic, not the batching (which CI checks on CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

TIE = 5e-3
LOGIT_TOL = 1e-2


def greedy(session: Any, ids: Sequence[int], new: int) -> tuple[list[int], list[float], np.ndarray]:
    """Greedy tokens of one prompt, per step the top-1 minus top-2 logit, and the first step's logits.

    A plain loop over `session.run` with numpy feeds (the graph's own layout,
    worker/llm/session.py), independent of how the worker's decode keeps its cache.
    """
    names = [i.name for i in session.get_inputs()]
    past = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    outputs = ["logits", *(p.name.replace("past_key_values.", "present.") for p in past)]
    feed: dict[str, np.ndarray] = {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
    }
    if "position_ids" in names:
        feed["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
    for p in past:  # (1, kv_heads, 0, head_dim): the empty past of a first step
        feed[p.name] = np.zeros((1, p.shape[1], 0, p.shape[3]), dtype=np.float32)
    tokens: list[int] = []
    margins: list[float] = []
    first = np.zeros(0)
    for _ in range(new):
        logits, *present = session.run(outputs, feed)
        row = logits[0, -1].astype(np.float64)
        first = row if not tokens else first
        top2 = np.partition(row, -2)[-2:]
        margins.append(float(top2[1] - top2[0]))
        t = int(row.argmax())
        tokens.append(t)
        total = len(ids) + len(tokens)
        feed = {
            "input_ids": np.array([[t]], dtype=np.int64),
            "attention_mask": np.ones((1, total), dtype=np.int64),
            **{p.name: v for p, v in zip(past, present, strict=True)},
        }
        if "position_ids" in names:
            feed["position_ids"] = np.array([[total - 1]], dtype=np.int64)
    return tokens, margins, first


def compare(
    cpu: list[tuple[list[int], list[float], np.ndarray]], cuda: list[tuple[list[int], Any, np.ndarray]]
) -> dict[str, Any]:
    rows = []
    for (ct, margins, c_logits), (gt, _, g_logits) in zip(cpu, cuda, strict=True):
        same = next((i for i, (a, b) in enumerate(zip(ct, gt, strict=True)) if a != b), len(ct))
        tie = same < len(ct) and margins[same] < TIE
        diff = float(np.abs(c_logits - g_logits).max())
        rows.append(
            {
                "tokens": len(ct),
                "distinct_tokens": len(set(ct)),
                "agree_until": same,
                "divergence_margin": None if same == len(ct) else round(margins[same], 6),
                "near_tie": tie,
                "first_step_max_abs_logit_diff": diff,
                "ok": (same == len(ct) or tie) and diff < LOGIT_TOL,
            }
        )
    return {
        "policy": f"tokens equal until a near-tie (CPU top-2 margin < {TIE}); "
        f"first-step logits within {LOGIT_TOL}",
        "prompts": rows,
        "agreeing_tokens": sum(r["agree_until"] for r in rows),
        "total_tokens": sum(r["tokens"] for r in rows),
        "ok": all(r["ok"] for r in rows),
    }


def cuda_session(model: Path, threads: int) -> Any:
    """fp32 CUDA session with TF32 off (and CUDA really first, else RuntimeError)."""
    from worker.llm.session import make_session

    providers: list[Any] = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    s = make_session(model, threads=threads, providers=providers)  # type: ignore[arg-type]
    if s.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"CUDA did not load for the equality check: {s.get_providers()}")
    return s
