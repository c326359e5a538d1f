"""One ONNX Runtime session of the exported decoder, and its two forward passes.

`DecoderSession` checks the graph's inputs and outputs once (export/llm/onnx_export.py
wrote them; STACK.md describes optimum's layout), then runs a *prefill*
(left-padded prompts, empty past) or a *decode step* (one token per row on
top of a KV cache) and returns the last position's logits with the new cache.
It also holds the plain unbatched greedy loop used as the reference.

Every prompt starts with llm.json's prompt prefix (the chat template's system
turn: 24 of SmolLM2's ~91 prompt tokens). Its keys and values are computed
once (`cache_prefix`) and a prefill of prompts that start with it feeds only
the rest, on top of that cached past: the cache row then reads [prefix,
padding, prompt rest], padding masked out, position ids counted over real
tokens only, so each row sees exactly the tensors it would see alone.

Graphs exported with a `logits_to_keep` input (export/llm/graph.py, named in
llm.json) are fed 1 in prefill, so the LM head runs on the last position only;
older graphs have no such input and return every position's logits, of which
only the last column is read: both give the same tokens.

With I/O binding (`io_binding`, on by default) the cache never leaves the
session's device: the present keys and values are bound to it and become
the next step's past as they are (worker/llm/device_kv.py: `DeviceKVCache`,
whose row gathers and joins run there too), and only the logits ONNX Runtime
returns (the last position: `logits_to_keep`, or a decode step's single one)
are copied to the host. On CPU the device is host memory that ORT owns, and
the same code runs, so the CPU tests prove it gives the numpy loop's tokens.
Without it (`io_binding=False`) the cache is numpy arrays fed to and read
back from `session.run` every step.

This module does not schedule, sample or detokenize.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from worker.llm.api import LLMConfig
from worker.llm.batch import Cache, KVCache, left_pad, position_ids
from worker.llm.device_kv import DeviceKVCache, DeviceKVOps

LOG = logging.getLogger(__name__)


def make_session(
    model: Path, *, threads: int, providers: Sequence[str], allow_spinning: bool = True
) -> ort.InferenceSession:
    """An ORT session with explicit providers and thread counts."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not allow_spinning:  # idle threads sleep instead of burning a core between steps
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), opts, providers=list(providers))


class DecoderSession:
    """The exported causal LM: prefill and decode, the cache on the device or in numpy arrays.

    io_binding: keep the KV cache as OrtValues on the session's device (None:
    the default, on).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        config: LLMConfig,
        *,
        last_logits: bool = True,
        io_binding: bool | None = None,
    ) -> None:
        self.session = session
        self.config = config
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        unknown = set(inputs) - {"input_ids", "attention_mask", "position_ids", *self.past_names}
        if unknown or "input_ids" not in inputs or "attention_mask" not in inputs:
            raise ValueError(
                f"LLM graph inputs {sorted(inputs)}: expected input_ids, "
                f"attention_mask, [position_ids], past_key_values.*"
            )
        if len(self.past_names) != 2 * config.num_layers:
            raise ValueError(
                f"graph has {len(self.past_names)} past inputs, llm.json says {config.num_layers} layers"
            )
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        missing = [n for n in ["logits", *self.present_names] if n not in outputs]
        if missing:
            raise ValueError(f"LLM graph lacks outputs {missing}")
        self.output_names = ["logits", *self.present_names]
        self.has_positions = "position_ids" in inputs
        kv_type = inputs[self.past_names[0]].type
        self.kv_dtype = np.float16 if kv_type == "tensor(float16)" else np.float32
        # The input llm.json names, when the graph really has it (an overridable
        # initializer: not fed, the graph computes every position's logits).
        keep = config.raw.get("logits_to_keep_input")
        overridable = {i.name for i in session.get_overridable_initializers()}
        if keep and keep not in overridable:
            raise ValueError(f"llm.json names logits input {keep!r}, the graph has none")
        self.logits_to_keep: str | None = keep if keep and last_logits else None
        self.prefix: tuple[int, ...] = ()  # token ids whose KV is cached (see cache_prefix)
        self._prefix_past: list[np.ndarray] = []  # (1, kv_heads, len(prefix), head_dim) each
        self.io_binding = True if io_binding is None else io_binding
        # Row gathers and joins on the device; also repeats the prefix's past per row.
        # Without logits_to_keep a prefill's logits cover every position: only the
        # last one is copied to the host (a helper graph takes it on the device).
        logits_type = next(o.type for o in session.get_outputs() if o.name == "logits")
        logits_dtype = np.float16 if logits_type == "tensor(float16)" else np.float32
        self.kv_ops = (
            DeviceKVOps(
                session,
                len(self.past_names),
                self.kv_dtype,
                logits_dtype=None if self.logits_to_keep else logits_dtype,
            )
            if self.io_binding
            else None
        )
        self._prefix_dev: list[ort.OrtValue] = []  # _prefix_past on the device

    def cache_prefix(self, ids: Sequence[int]) -> None:
        """Compute and keep the KV of `ids`, the prefix every prompt shares."""
        if not ids:
            return
        feed: dict[str, np.ndarray] = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        }
        if self.has_positions:
            feed["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        if self.logits_to_keep:
            feed[self.logits_to_keep] = np.array(1, dtype=np.int64)
        feed.update(self._empty_past(1))
        _, *present = self.session.run(self.output_names, feed)
        self.prefix, self._prefix_past = tuple(ids), present
        if self.kv_ops is not None:
            self._prefix_dev = self.kv_ops.to_device(present)

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        empty = KVCache.empty(
            len(self.past_names), batch, self.config.num_kv_heads, self.config.head_dim, self.kv_dtype
        )
        return dict(zip(self.past_names, empty.past, strict=True))

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, Cache, int, int]:
        """Prompts -> ((n, V) last-position logits, their KV, padded tokens fed, prefix tokens reused).

        The part of the prompts after the cached prefix (when all of them start
        with it, else the whole prompts) is left-padded and fed on top of the
        prefix's past (else an empty past).
        """
        n, p = len(prompts), len(self.prefix)
        shared = p > 0 and all(len(q) > p and tuple(q[:p]) == self.prefix for q in prompts)
        ids, mask = left_pad([q[p:] for q in prompts] if shared else prompts, self.config.pad_token_id)
        if shared:  # (n, p + L): [prefix, padding, rest]
            mask = np.concatenate([np.ones((n, p), dtype=np.int64), mask], axis=1)
        feed: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask}
        if self.has_positions:
            feed["position_ids"] = np.ascontiguousarray(position_ids(mask)[:, -ids.shape[1] :])
        if self.logits_to_keep:
            feed[self.logits_to_keep] = np.array(1, dtype=np.int64)
        reused = p * n if shared else 0
        if self.kv_ops is not None:
            # The prefix's past repeated per row, gathered on the device (row 0, n times).
            past = self.kv_ops.select(self._prefix_dev, np.zeros(n, np.int64), 0) if shared else None
            whole = self.logits_to_keep is None and ids.shape[1] > 1  # (n, L, V) on the device
            logits, present = self._run_bound(feed, past, n, whole)  # (n, 1, V)
            return logits[:, -1, :], DeviceKVCache(present, mask, self.kv_ops), int(ids.size), reused
        if shared:
            rows = (np.repeat(a, n, axis=0) for a in self._prefix_past)  # (n, kv_heads, p, head_dim)
            feed.update(zip(self.past_names, rows, strict=True))
        else:
            feed.update(self._empty_past(n))
        logits, *arrays = self.session.run(self.output_names, feed)  # (n, L or 1, V)
        # Left padding puts every row's last prompt token in the last column.
        return logits[:, -1, :], KVCache(arrays, mask), int(ids.size), reused

    def decode(self, tokens: np.ndarray, positions: np.ndarray, kv: Cache) -> tuple[np.ndarray, Cache]:
        """One token per row: (B,) tokens at (B,) positions on `kv` -> ((B, V) logits, the longer KV)."""
        mask = kv.step_mask()  # (B, T + 1)
        feed: dict[str, np.ndarray] = {"input_ids": tokens[:, None], "attention_mask": mask}
        if self.has_positions:
            feed["position_ids"] = positions[:, None]
        if isinstance(kv, DeviceKVCache):
            logits, present = self._run_bound(feed, kv.past, kv.batch)  # (B, 1, V)
            return logits[:, -1, :], DeviceKVCache(present, mask, kv.ops)
        assert isinstance(kv, KVCache), type(kv)
        feed.update(zip(self.past_names, kv.past, strict=True))
        logits, *arrays = self.session.run(self.output_names, feed)  # (B, 1, V)
        return logits[:, -1, :], KVCache(arrays, mask)  # (B, heads, T + 1, hd) each

    def _run_bound(
        self,
        feed: dict[str, np.ndarray],
        past: Sequence[ort.OrtValue] | None,
        batch: int,
        whole: bool = False,
    ) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """One forward pass with I/O binding: host inputs copied in, `past` (None: empty)
        bound where it lies, presents left on the device, the (B, 1, V) last-position
        logits copied to the host (whole: the graph returns every position's, cut on the device)."""
        assert self.kv_ops is not None
        io = self.session.io_binding()
        # As OrtValues: bind_cpu_input rejects `logits_to_keep`, an overridable
        # initializer rather than a graph input. Bound here, copied where the
        # graph reads them (once, when bound); they must live until the run.
        host = [
            ort.OrtValue.ortvalue_from_numpy(a if a.flags.c_contiguous else a.copy()) for a in feed.values()
        ]
        for name, v in zip(feed, host, strict=True):
            io.bind_ortvalue_input(name, v)
        if past is None:
            past = self.kv_ops.to_device(list(self._empty_past(batch).values()))
        for name, v in zip(self.past_names, past, strict=True):
            io.bind_ortvalue_input(name, v)
        device = (self.kv_ops.device, self.kv_ops.device_id)
        # (B, 1, V) to the host (ORT copies it when it ran elsewhere), or whole on the device.
        io.bind_output("logits", *(device if whole else ("cpu", 0)))
        for name in self.present_names:
            io.bind_output(name, *device)
        self.session.run_with_iobinding(io)
        logits, *present = io.get_outputs()
        return self.kv_ops.last_logits(logits) if whole else logits.numpy(), present

    def generate_alone(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """The unbatched greedy reference: one sequence, no padding, every position's logits."""
        feed: dict[str, np.ndarray] = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        }
        if self.has_positions:
            feed["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        feed.update(self._empty_past(1))
        eos = set(self.config.eos_token_ids)
        out: list[int] = []
        while len(out) < max_new_tokens:
            logits, *present = self.session.run(self.output_names, feed)
            token = int(logits[0, -1].argmax())
            if token in eos:
                break
            out.append(token)
            total = len(ids) + len(out)
            feed = {
                "input_ids": np.array([[token]], dtype=np.int64),
                "attention_mask": np.ones((1, total), dtype=np.int64),
                **dict(zip(self.past_names, present, strict=True)),
            }
            if self.has_positions:
                feed["position_ids"] = np.array([[total - 1]], dtype=np.int64)
        return out
