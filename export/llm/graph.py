"""The exported fp32 graph, edited into the one served: `logits_to_keep`, then int8.

Two edits, applied in this order by export/llm/onnx_export.py:

1. `add_logits_to_keep`: an optional input that limits the LM head to the last
   positions. optimum exports a decoder whose `logits` cover every input
   position: (batch, seq, vocab). A prefill reads only the last column (prompts
   are left-padded), yet the LM head MatMul (hidden 576 x vocab 49,152 for
   SmolLM2) runs for all ~90 prompt positions: a third of a prefill's kernel
   time (docs/bench.md). The edit inserts `Slice(hidden, starts=-logits_to_keep,
   axis=1)` before the MatMul that produces `logits`, as transformers' own
   `logits_to_keep` argument does. `logits_to_keep` is a graph input *with an
   initializer of the same name* (an overridable initializer): fed 1, `logits`
   is (batch, 1, vocab); not fed, it is 0, the slice starts at 0 and the graph
   behaves exactly as before, so every consumer that wants all positions
   (perplexity, int8 calibration) runs unchanged. A decode step (seq 1) is the
   same either way. Applied before int8 quantization: the LM head keeps its
   name, so quantization (and its fp32 exclusions) treat it as before.

2. `quantize_int8`: dynamic int8 quantization, minus the outlier MatMuls.
   `quantize_dynamic` quantizes each MatMul's *activation* per tensor to uint8
   at run time. LLM activations carry a few huge outliers in some channels
   (SmolLM2: the MLP down-projection inputs reach |x| ~ 3000 with an rms near
   10), and one scale per tensor then crushes every other value: quantizing
   everything took SmolLM2-135M's held-out perplexity from 80 to 190 and its
   next-token argmax agreed with fp32 on only 39% of positions.

   So a calibration pass first runs the fp32 graph on a few prompts shaped like
   the worker's, measures (max - min) / rms of each weight MatMul's input, and
   keeps the worst ones in fp32: at most `keep_fp32_fraction` of them (10%), and
   only those whose ratio exceeds `min_outlier_ratio` (50). The uint8 rounding
   noise relative to the signal is about ratio / 883 (step = range / 255, noise
   = step / sqrt(12)), so 50 means ~6% noise. The ratio grows with the number of
   tokens seen, hence a fraction of the ranking rather than a fixed threshold
   alone.

   SmolLM2-135M, 16 held-out catalog sentences (fp32 perplexity 79.6): all
   quantized 190.8 (130 MiB); top 12 kept fp32 102.8; top 21 (10%) 88.0 (183
   MiB); top 32 89.1; top 42 88.9. The rest of the gap comes from q/k/v,
   gate/up and the (tied) embedding, each costing a few points.

This module does not export, load a checkpoint or measure perplexity.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.llm.quality import make_session, past_specs, position_ids_from_mask
from recgen.core.formats import LLM_MODEL_FILE

LOG = logging.getLogger(__name__)

# ---------------------------------------------------------------- 1. logits of the last positions only

LOGITS_TO_KEEP = "logits_to_keep"  # the input's name, recorded in llm.json
_INT64_MAX = np.iinfo(np.int64).max


def add_logits_to_keep(model_path: Path) -> str:
    """Edit `model_path` in place; returns the LM head node's name.

    Raises ValueError when `logits` is not produced by a MatMul of the hidden
    state (batch, seq, hidden) with a constant weight: an unknown graph shape is
    left alone by the caller rather than edited blindly.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    if any(i.name == LOGITS_TO_KEEP for i in graph.input):
        raise ValueError(f"{model_path} already has a {LOGITS_TO_KEEP} input")
    head = next((n for n in graph.node if "logits" in n.output), None)
    # Constant: an initializer, or computed from constants only (the tied embedding's
    # Transpose in fp32, its DequantizeLinear in int8). Nodes are in topological order.
    constants = {i.name for i in graph.initializer}
    for n in graph.node:
        if all(i in constants for i in n.input if i):
            constants.update(n.output)
    if head is None or head.op_type != "MatMul" or head.input[1] not in constants:
        kind = "nothing" if head is None else f"{head.op_type} {head.name}"
        raise ValueError(f"logits come from {kind}, not a MatMul with a constant weight (the LM head)")
    hidden = head.input[0]  # (batch, seq, hidden)
    sliced = f"{hidden}/last_positions"

    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, []))
    graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), LOGITS_TO_KEEP))
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([_INT64_MAX], dtype=np.int64), "logits_to_keep/ends"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "logits_to_keep/axes"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "logits_to_keep/shape"),
        ]
    )
    nodes = [
        helper.make_node("Neg", [LOGITS_TO_KEEP], ["logits_to_keep/neg"], name="/logits_to_keep/Neg"),
        helper.make_node(
            "Reshape",
            ["logits_to_keep/neg", "logits_to_keep/shape"],
            ["logits_to_keep/starts"],
            name="/logits_to_keep/Reshape",
        ),
        # starts = -k: the last k positions; k = 0 gives starts 0, every position.
        helper.make_node(
            "Slice",
            [hidden, "logits_to_keep/starts", "logits_to_keep/ends", "logits_to_keep/axes"],
            [sliced],
            name="/logits_to_keep/Slice",
        ),
    ]
    head.input[0] = sliced
    # Topological order: the new nodes go right before the LM head.
    at = list(graph.node).index(head)
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(model_path))
    LOG.debug("llm export: %s input added before %s", LOGITS_TO_KEEP, head.name)
    return head.name


# ---------------------------------------------------------------- 2. int8, minus the outlier MatMuls

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
    int8 = out / LLM_MODEL_FILE
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
