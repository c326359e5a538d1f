"""Dynamic int8 quantization of the exported LLM, minus its outlier MatMuls.

`quantize_dynamic` quantizes each MatMul's *activation* per tensor to uint8 at
run time. LLM activations carry a few huge outliers in some channels (SmolLM2:
the MLP down-projection inputs reach |x| ~ 3000 with an rms near 10), and one
scale per tensor then crushes every other value: quantizing everything took
SmolLM2-135M's held-out perplexity from 80 to 190 and its next-token argmax
agreed with fp32 on only 39% of positions.

So a calibration pass first runs the fp32 graph on a few prompts shaped like the
worker's, measures (max - min) / rms of each weight MatMul's input, and keeps the
worst ones in fp32: at most `keep_fp32_fraction` of them (10%), and only those
whose ratio exceeds `min_outlier_ratio` (50). The uint8 rounding noise relative
to the signal is about ratio / 883 (step = range / 255, noise = step / sqrt(12)),
so 50 means ~6% noise. The ratio grows with the number of tokens seen, hence a
fraction of the ranking rather than a fixed threshold alone.

SmolLM2-135M, 16 held-out catalog sentences (fp32 perplexity 79.6): all
quantized 190.8 (130 MiB); top 12 kept fp32 102.8; top 21 (10%) 88.0 (183 MiB);
top 32 89.1; top 42 88.9. The rest of the gap comes from q/k/v, gate/up and the
(tied) embedding, each costing a few points.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.llm.quality import make_session, past_specs, position_ids_from_mask

LOG = logging.getLogger(__name__)

DEFAULT_KEEP_FP32_FRACTION = 0.1
MIN_OUTLIER_RATIO = 50.0

# Calibration inputs shaped like the worker's prompts (they get wrapped in the
# model's prompt prefix / suffix): the activations that matter are the served ones.
CALIBRATION_MESSAGES: tuple[str, ...] = (
    "I recently watched Star Wars (1977) and Raiders of the Lost Ark (1981). In one "
    "sentence, tell me why I would enjoy The Empire Strikes Back (1980).",
    "I liked Fargo (1996), Pulp Fiction (1994) and The Usual Suspects (1995). Write one "
    "short sentence recommending Heat (1995) and Casino (1995) to me. Mention no other movies.",
    "Recommend Toy Story (1995), an Animation|Children's|Comedy film, to a family.",
    "Why would someone who loved Casablanca (1942) like Roman Holiday (1953)?",
)


def _weight_matmuls(model) -> dict[str, str]:
    """MatMul node name -> its activation input, for MatMuls with a constant weight."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return {
        n.name: n.input[0]
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in constants and n.input[0] not in constants
    }


def activation_outlier_ratios(
    fp32: Path, prompts: Sequence[Sequence[int]], num_threads: int | None = None
) -> dict[str, float]:
    """(max - min) / rms of every weight MatMul's input over the prompts' tokens."""
    import onnx

    model = onnx.load(str(fp32))
    targets = _weight_matmuls(model)
    existing = {o.name for o in model.graph.output}
    for tensor in sorted(set(targets.values()) - existing):
        model.graph.output.append(onnx.ValueInfoProto(name=tensor))
    # From bytes: no second copy of a half-GB model on disk.
    session = make_session(model.SerializeToString(), num_threads)
    del model
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    feed: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in {i.name for i in session.get_inputs()}:
        feed["position_ids"] = position_ids_from_mask(mask, width)
    for name, heads, head_dim, dtype in past_specs(session):
        feed[name] = np.zeros((len(prompts), heads, 0, head_dim), dtype=dtype)
    wanted = sorted(set(targets.values()))
    values = dict(zip(wanted, session.run(wanted, feed), strict=True))
    valid = mask.astype(bool)
    ratios = {}
    for node, tensor in targets.items():
        x = values[tensor][valid].astype(np.float64)  # only real (unpadded) tokens
        rms = float(np.sqrt((x * x).mean())) or 1e-12
        ratios[node] = float(x.max() - x.min()) / rms
    return ratios


def quantize_int8(
    fp32: Path,
    out: Path,
    calibration_prompts: Sequence[Sequence[int]],
    *,
    keep_fp32_fraction: float = DEFAULT_KEEP_FP32_FRACTION,
    min_outlier_ratio: float = MIN_OUTLIER_RATIO,
    num_threads: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write `out`/model.onnx (dynamic int8, outlier MatMuls kept fp32).

    Returns the path and a description for llm.json: method, weight type, the
    selection rule, and the nodes left in fp32 with their ratios.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ratios = activation_outlier_ratios(fp32, calibration_prompts, num_threads)
    budget = math.ceil(keep_fp32_fraction * len(ratios))
    ranked = sorted(ratios, key=lambda n: -ratios[n])
    keep_fp32 = [n for n in ranked[:budget] if ratios[n] > min_outlier_ratio]
    LOG.info(
        "int8: %d of %d weight MatMuls kept fp32 (activation range/rms %s)",
        len(keep_fp32),
        len(ratios),
        f">= {ratios[keep_fp32[-1]]:.0f}" if keep_fp32 else "all below the floor",
    )
    out.mkdir(parents=True, exist_ok=True)
    int8 = out / "model.onnx"
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, nodes_to_exclude=keep_fp32)
    info = {
        "method": "onnxruntime.quantize_dynamic",
        "weight_type": "QInt8",
        "keep_fp32_fraction": keep_fp32_fraction,
        "min_outlier_ratio": min_outlier_ratio,
        "calibration_prompts": len(calibration_prompts),
        "weight_matmuls": len(ratios),
        "fp32_matmuls": {n: round(ratios[n], 1) for n in keep_fp32},
    }
    return int8, info
