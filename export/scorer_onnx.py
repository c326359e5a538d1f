"""The ranking scorer as an ONNX graph: scores[b, c] = u_b · v_{b,c}.

The seed's prediction u_iᵀ v_j (section 4.4), batched: inputs
`user_vectors` (B, d) and `item_vectors` (B, C, d), output `scores` (B, C).
Item vectors are inputs rather than weights so that items added at run time
(mapped from their text) are scored like any other. Built with onnx.helper:
no torch needed. This module does not choose candidates (FAISS does).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

OPSET = 17


def build_scorer(dim: int) -> onnx.ModelProto:
    users = helper.make_tensor_value_info("user_vectors", TensorProto.FLOAT, ["batch", dim])
    items = helper.make_tensor_value_info("item_vectors", TensorProto.FLOAT, ["batch", "candidates", dim])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "candidates"])
    node = helper.make_node("Einsum", ["user_vectors", "item_vectors"], ["scores"], equation="bd,bcd->bc")
    graph = helper.make_graph([node], "recgen_mf_scorer", [users, items], [scores])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="recgen")
    model.ir_version = 8  # readable by every onnxruntime we support
    onnx.checker.check_model(model)
    return model


def export_scorer(dim: int, path: Path) -> None:
    onnx.save(build_scorer(dim), str(path))
