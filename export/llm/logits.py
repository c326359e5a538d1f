"""Graph edit: an optional `logits_to_keep` input that limits the LM head to the last positions.

optimum exports a decoder whose `logits` cover every input position: (batch, seq,
vocab). A prefill reads only the last column (prompts are left-padded), yet the LM
head MatMul (hidden 576 x vocab 49,152 for SmolLM2) runs for all ~90 prompt
positions: a third of a prefill's kernel time (docs/bench.md).

The edit inserts `Slice(hidden, starts=-logits_to_keep, axis=1)` before the MatMul
that produces `logits`, as transformers' own `logits_to_keep` argument does.
`logits_to_keep` is a graph input *with an initializer of the same name* (an
overridable initializer): fed 1, `logits` is (batch, 1, vocab); not fed, it is 0,
the slice starts at 0 and the graph behaves exactly as before, so every consumer
that wants all positions (perplexity, int8 calibration) runs unchanged. A decode
step (seq 1) is the same either way.

Applied to the fp32 graph right after export, before int8 quantization: the LM
head keeps its name, so quantization (and its fp32 exclusions) treat it as
before. This module does not export, quantize or run anything.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

LOG = logging.getLogger(__name__)

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
