"""A few-node ONNX model written as protobuf bytes, for ONNX Runtime to load.

The worker builds small helper graphs at load time (worker/llm/device_kv.py:
gathering and joining KV-cache rows where the cache lives). The `onnx`
package that would build them is an export-time dependency only, so this
module writes the handful of ModelProto fields those graphs use in protobuf's
wire format (onnx/onnx.proto3 gives the field numbers; tests/unit/test_io_binding.py
checks the bytes with `onnx.checker`). It knows nodes with int attributes,
typed graph inputs and outputs of a given rank, and int64 initializers, and
nothing else: it is not a general ONNX writer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# TensorProto.DataType
FLOAT, INT64, FLOAT16 = 1, 7, 10
ELEM_TYPE = {np.dtype(np.float32): FLOAT, np.dtype(np.float16): FLOAT16, np.dtype(np.int64): INT64}

_IR_VERSION = 8  # ONNX 1.10+; what ONNX Runtime 1.32 loads without complaint
_OPSET = 17


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64: two's complement, 10 bytes
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(fieldno: int, n: int) -> bytes:  # wire type 0: varint
    return _varint(fieldno << 3) + _varint(n)


def _bytes(fieldno: int, data: bytes | str) -> bytes:  # wire type 2: length-delimited
    raw = data.encode() if isinstance(data, str) else data
    return _varint(fieldno << 3 | 2) + _varint(len(raw)) + raw


@dataclass
class Node:
    op_type: str
    inputs: Sequence[str]
    outputs: Sequence[str]
    ints: dict[str, int] = field(default_factory=dict)  # INT attributes

    def encode(self) -> bytes:  # NodeProto
        out = b"".join(_bytes(1, i) for i in self.inputs) + b"".join(_bytes(2, o) for o in self.outputs)
        out += _bytes(4, self.op_type)
        for name, value in self.ints.items():  # AttributeProto: name 1, i 3, type 20 (INT = 2)
            out += _bytes(5, _bytes(1, name) + _int(3, value) + _int(20, 2))
        return out


def _value_info(name: str, elem_type: int, rank: int) -> bytes:
    # Symbolic dims named after the value: no two inputs are claimed to share a size.
    dims = b"".join(_bytes(1, _bytes(2, f"{name}_d{i}")) for i in range(rank))  # Dimension.dim_param
    tensor = _int(1, elem_type) + _bytes(2, dims)  # TypeProto.Tensor: elem_type, shape
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor))  # ValueInfoProto: name, TypeProto.tensor_type


def _int64_tensor(name: str, values: Sequence[int]) -> bytes:  # TensorProto, 1-D
    raw = np.asarray(values, dtype="<i8").tobytes()
    return _int(1, len(values)) + _int(2, INT64) + _bytes(8, name) + _bytes(9, raw)


def model(
    name: str,
    nodes: Sequence[Node],
    inputs: Sequence[tuple[str, int, int]],  # (name, elem type, rank)
    outputs: Sequence[tuple[str, int, int]],
    initializers: Mapping[str, Sequence[int]] | None = None,  # int64 1-D constants
) -> bytes:
    """A serialized ModelProto of one graph (default domain, opset 17)."""
    graph = b"".join(_bytes(1, n.encode()) for n in nodes) + _bytes(2, name)
    graph += b"".join(_bytes(5, _int64_tensor(k, v)) for k, v in (initializers or {}).items())
    graph += b"".join(_bytes(11, _value_info(*i)) for i in inputs)
    graph += b"".join(_bytes(12, _value_info(*o)) for o in outputs)
    opset = _bytes(1, "") + _int(2, _OPSET)  # OperatorSetIdProto: domain, version
    return _int(1, _IR_VERSION) + _bytes(2, "recgen") + _bytes(7, graph) + _bytes(8, opset)
