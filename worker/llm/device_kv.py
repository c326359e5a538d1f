"""The KV cache kept as OrtValues on the session's device, and its row operations there.

With I/O binding (worker/llm/session.py) the decoder's present keys and values
stay where ONNX Runtime computed them (GPU memory under CUDA, ORT-owned host
memory on CPU) and are bound as the next step's past. The continuous batch
still keeps some rows (a request finished) and joins batches (requests
admitted): `DeviceKVOps` does both with small helper ONNX graphs built at
load time (worker/llm/onnx_graph.py: Gather + Slice, Pad + Concat; and a
Slice that keeps the last position of a graph's logits when it has no
`logits_to_keep` input), run on the model's providers with I/O binding, so
the cache never crosses to the host. Only the small per-row arrays (the
(B, T) mask, indices, pad widths) live on the host.

`DeviceKVCache` has the layout and semantics of worker/llm/batch.py's
`KVCache` (left padding, the mask says which columns count; dropping rows
trims the columns that became padding in every remaining row), so the tokens
are those of the numpy loop, bit for bit. This module runs no decoder step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from worker.llm.onnx_graph import ELEM_TYPE, INT64, Node, model

_INT64_MAX = (1 << 63) - 1


def session_device(session: ort.InferenceSession) -> tuple[str, int]:
    """The (device type, id) where `session` keeps its tensors: what I/O binding binds to."""
    provider = session.get_providers()[0]
    if provider == "CUDAExecutionProvider":
        return "cuda", int(session.get_provider_options()[provider].get("device_id", 0))
    return "cpu", 0


def select_graph(n: int, elem: int) -> bytes:
    """kv_i (B, H, T, hd), rows (n,), start (1,) -> out_i = kv_i[rows][:, :, start:]."""
    nodes = []
    for i in range(n):
        nodes += [
            Node("Gather", [f"kv_{i}", "rows"], [f"g_{i}"], {"axis": 0}),
            Node("Slice", [f"g_{i}", "start", "end", "axes"], [f"out_{i}"]),
        ]
    return model(
        "kv_select",
        nodes,
        [*((f"kv_{i}", elem, 4) for i in range(n)), ("rows", INT64, 1), ("start", INT64, 1)],
        [(f"out_{i}", elem, 4) for i in range(n)],
        {"end": [_INT64_MAX], "axes": [2]},
    )


def join_graph(n: int, elem: int) -> bytes:
    """a_i (Ba, H, Ta, hd), b_i (Bb, H, Tb, hd), pads -> out_i: both left-padded on T, stacked on B."""
    nodes = []
    for i in range(n):
        nodes += [
            Node("Pad", [f"a_{i}", "pads_a"], [f"pa_{i}"]),  # constant 0
            Node("Pad", [f"b_{i}", "pads_b"], [f"pb_{i}"]),
            Node("Concat", [f"pa_{i}", f"pb_{i}"], [f"out_{i}"], {"axis": 0}),
        ]
    return model(
        "kv_join",
        nodes,
        [
            *((f"a_{i}", elem, 4) for i in range(n)),
            *((f"b_{i}", elem, 4) for i in range(n)),
            ("pads_a", INT64, 1),
            ("pads_b", INT64, 1),
        ],
        [(f"out_{i}", elem, 4) for i in range(n)],
    )


def last_graph(elem: int) -> bytes:
    """logits (B, L, V) -> (B, 1, V), the last position: what a graph without
    `logits_to_keep` would otherwise send to the host whole."""
    nodes = [Node("Slice", ["logits", "minus_one", "end", "axes"], ["last"])]
    inits = {"minus_one": [-1], "end": [_INT64_MAX], "axes": [1]}
    return model("last_logits", nodes, [("logits", elem, 3)], [("last", elem, 3)], inits)


class DeviceKVOps:
    """Row gathers and joins of `n` KV tensors of `dtype`, run where `session` runs
    (and, given `logits_dtype`, the last position of full logits)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        n: int,
        dtype: np.dtype | type,
        logits_dtype: np.dtype | type | None = None,
    ) -> None:
        self.n = n
        self.device, self.device_id = session_device(session)
        providers = session.get_providers()
        # The same providers on the same device, and no other option: what
        # get_provider_options() reports does not always parse back (CUDA's
        # stream fields), and a copy needs no tuning. Each helper session has its
        # own CUDA stream; every run ends with its stream synchronized (the run
        # config entry disable_synchronize_execution_providers is "0" unless
        # set), so a tensor one session wrote is complete when the next reads it.
        options = [
            {"device_id": str(self.device_id)} if p == "CUDAExecutionProvider" else {} for p in providers
        ]
        opts = ort.SessionOptions()
        # Copies: one thread moves memory about as fast as several, and leaves
        # the model's threads alone.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # Their outputs are whole KV caches: from an arena they would hold a
        # cache's worth of host memory for good after each join (measured on
        # CPU at 32 rows: peak RSS 1.6 GB with it, 1.2 without). No effect on GPU memory.
        opts.enable_cpu_mem_arena = False
        elem = ELEM_TYPE[np.dtype(dtype)]

        def load(graph: bytes) -> ort.InferenceSession:
            return ort.InferenceSession(graph, opts, providers=providers, provider_options=options)

        self._select = load(select_graph(n, elem))
        self._join = load(join_graph(n, elem))
        self._last = None if logits_dtype is None else load(last_graph(ELEM_TYPE[np.dtype(logits_dtype)]))
        self._outputs = [f"out_{i}" for i in range(n)]

    def to_device(self, arrays: Sequence[np.ndarray]) -> list[ort.OrtValue]:
        """Host arrays -> OrtValues on the device (on CPU: the same memory, no copy,
        kept alive by the returned wrapper only: hold it while ORT may read it)."""
        return [ort.OrtValue.ortvalue_from_numpy(a, self.device, self.device_id) for a in arrays]

    def last_logits(self, logits: ort.OrtValue) -> np.ndarray:
        """(B, L, V) on the device -> (B, 1, V) on the host: only that much crosses."""
        assert self._last is not None, "built without logits_dtype"
        io = self._last.io_binding()
        io.bind_ortvalue_input("logits", logits)
        io.bind_output("last", "cpu")
        self._last.run_with_iobinding(io)
        return io.get_outputs()[0].numpy()

    def _run(
        self, session: ort.InferenceSession, values: dict[str, ort.OrtValue], host: dict[str, np.ndarray]
    ) -> list[ort.OrtValue]:
        io = session.io_binding()
        for name, v in values.items():
            io.bind_ortvalue_input(name, v)
        for name, a in host.items():
            io.bind_cpu_input(name, a)
        for name in self._outputs:
            io.bind_output(name, self.device, self.device_id)
        session.run_with_iobinding(io)
        return list(io.get_outputs())

    def select(self, past: Sequence[ort.OrtValue], rows: np.ndarray, start: int) -> list[ort.OrtValue]:
        """past[i][rows][:, :, start:] for every i (rows may repeat: a row copied n times)."""
        assert len(past) == self.n, (len(past), self.n)
        values = {f"kv_{i}": v for i, v in enumerate(past)}
        host = {
            "rows": np.ascontiguousarray(rows, dtype=np.int64),
            "start": np.array([start], dtype=np.int64),
        }
        return self._run(self._select, values, host)

    def join(
        self, a: Sequence[ort.OrtValue], pad_a: int, b: Sequence[ort.OrtValue], pad_b: int
    ) -> list[ort.OrtValue]:
        """Each a[i] and b[i] left-padded on the time axis by pad_a / pad_b zeros, stacked on B."""
        assert len(a) == len(b) == self.n, (len(a), len(b), self.n)
        values = {f"a_{i}": v for i, v in enumerate(a)} | {f"b_{i}": v for i, v in enumerate(b)}
        host = {"pads_a": _time_pads(pad_a), "pads_b": _time_pads(pad_b)}
        return self._run(self._join, values, host)


def _time_pads(left: int) -> np.ndarray:
    # ONNX Pad: all begins, then all ends, over (B, H, T, hd).
    return np.array([0, 0, left, 0, 0, 0, 0, 0], dtype=np.int64)


@dataclass
class DeviceKVCache:
    """past[i]: (B, kv_heads, T, head_dim) OrtValue on the device, in the graph's
    past-input order; mask: (B, T) int64 on the host. As batch.py's KVCache."""

    past: list[ort.OrtValue]
    mask: np.ndarray
    ops: DeviceKVOps

    @property
    def batch(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def nbytes(self) -> int:
        return sum(v.tensor_size_in_bytes() for v in self.past)

    def step_mask(self, new_tokens: int = 1) -> np.ndarray:
        """(B, T + new) mask for a forward pass feeding `new_tokens` real tokens per row."""
        return np.concatenate([self.mask, np.ones((self.batch, new_tokens), dtype=np.int64)], axis=1)

    def select(self, rows: np.ndarray) -> DeviceKVCache:
        """Keep `rows` (indices, in order), then trim the common left padding."""
        mask = self.mask[rows]
        real = mask.any(axis=0)  # (T,) columns some row still uses
        first = int(real.argmax()) if real.any() else self.length
        past = self.ops.select(self.past, rows, first)
        return DeviceKVCache(past, np.ascontiguousarray(mask[:, first:]), self.ops)

    def join(self, other: DeviceKVCache) -> DeviceKVCache:
        """Stack along B, left-padding the shorter one (mask 0, zero keys/values)."""
        if other.batch == 0:
            return self
        if self.batch == 0:
            return other
        t = max(self.length, other.length)
        past = self.ops.join(self.past, t - self.length, other.past, t - other.length)
        mask = np.zeros((self.batch + other.batch, t), dtype=np.int64)
        mask[: self.batch, t - self.length :] = self.mask
        mask[self.batch :, t - other.length :] = other.mask
        return DeviceKVCache(past, mask, self.ops)
