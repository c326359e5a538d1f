"""The speed-test LLM: SmolLM2-135M's architecture with random weights, exported with torch.onnx alone.

Speed does not depend on the weights, and no real model file can travel to the
GPU machine in one piece, so the model is built where it runs: a transformers
`LlamaForCausalLM` from SmolLM2-135M's config (the numbers of the default
export's llm.json: 30 layers, 3 KV heads, head_dim 64, vocab 49,152) with a
fixed seed. Those weights serve both the PyTorch `generate` arm and the ONNX
graph, which is traced from `OnnxDecoder`, a plain-torch forward over the same
parameter tensors in the worker's layout (worker/llm/session.py):

    inputs   input_ids (B, S) int64, attention_mask (B, P+S) int64, position_ids (B, S) int64,
             past_key_values.{i}.{key,value} (B, kv_heads, P, head_dim) float32
    outputs  logits (B, S, V), present.{i}.{key,value} (B, kv_heads, P+S, head_dim)

Why not the project's export (export/llm/onnx_export.py): it needs optimum-onnx,
which the GPU machine lacks and which does not support its transformers 5.x; and
the cache API of transformers changed between 4.57 (here) and 5.x (there), while
a plain forward over tensors does not. `parity` checks the graph against
transformers on the same weights wherever this runs.

This module builds, exports and checks; it does not time anything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recgen.core.formats import LLM_CONFIG_FILE, LLM_FORMAT, LLM_MODEL_FILE, LLM_TOKENIZER_FILE
from tools.gpu_check.tokenizer import EOS_ID, PAD_ID, PROMPT_PREFIX, PROMPT_SUFFIX, write_tokenizer

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spec:
    """A Llama decoder's shape. Default: SmolLM2-135M(-Instruct)'s config.json."""

    hidden: int = 576
    layers: int = 30
    heads: int = 9
    kv_heads: int = 3
    intermediate: int = 1536
    vocab: int = 49152
    rope_theta: float = 100000.0
    rms_eps: float = 1e-5
    max_positions: int = 8192
    seed: int = 0
    # Wider than transformers' 0.02: with 0.02 the tied embeddings make the greedy text one
    # token repeated (the logits mostly echo the input token), which would make the CUDA/CPU
    # token comparison nearly vacuous; 0.1 gives varied tokens. Speed does not depend on it.
    init_std: float = 0.1

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SMOLLM2_135M = Spec()
TINY = Spec(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512)  # unit tests


def build_hf(spec: Spec) -> Any:
    """A randomly initialised transformers LlamaForCausalLM (fp32, eval mode, seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        rope_theta=spec.rope_theta,
        rms_norm_eps=spec.rms_eps,
        tie_word_embeddings=True,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        initializer_range=spec.init_std,
    )
    # transformers 5.x reads the rope base from rope_parameters; 4.57 from rope_theta.
    if hasattr(config, "rope_parameters") and isinstance(config.rope_parameters, dict):
        config.rope_parameters["rope_theta"] = spec.rope_theta
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).float().eval()
    return model


def _decoder_class() -> Any:
    import torch
    from torch import nn

    class OnnxDecoder(nn.Module):
        """Llama forward with an explicit KV cache over `hf`'s own parameters (nothing copied)."""

        def __init__(self, hf: Any, spec: Spec) -> None:
            super().__init__()
            self.hf, self.spec = hf, spec
            d = spec.head_dim
            inv = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
            self.register_buffer("inv_freq", inv, persistent=False)  # (d/2,)

        @staticmethod
        def _rms(x: Any, w: Any, eps: float) -> Any:
            return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

        @staticmethod
        def _rotate(x: Any, cos: Any, sin: Any) -> Any:
            half = x.shape[-1] // 2
            rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
            return x * cos + rot * sin

        def forward(
            self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any
        ) -> tuple[Any, ...]:
            s, m = self.spec, self.hf.model
            b, n = input_ids.shape
            d, rep = s.head_dim, s.heads // s.kv_heads
            x = m.embed_tokens(input_ids)  # (B, S, H)
            freqs = position_ids[..., None].to(torch.float32) * self.inv_freq  # (B, S, d/2)
            emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, S, d)
            cos, sin = emb.cos(), emb.sin()
            # Key j is visible to query i when it is a real token and its position
            # (real tokens counted from 0, as the worker numbers them) is <= i's.
            key_pos = attention_mask.cumsum(-1) - 1  # (B, T)
            visible = (key_pos[:, None, :] <= position_ids[:, :, None]) & (attention_mask[:, None, :] > 0)
            # A finite floor, not -inf: an all-padding row must give numbers, not NaN.
            bias = (~visible)[:, None].to(torch.float32) * torch.finfo(torch.float32).min  # (B,1,S,T)
            present: list[Any] = []
            for i, layer in enumerate(m.layers):
                a = layer.self_attn
                h = self._rms(x, layer.input_layernorm.weight, s.rms_eps)
                q = a.q_proj(h).view(b, n, s.heads, d).transpose(1, 2)  # (B, nh, S, d)
                k = a.k_proj(h).view(b, n, s.kv_heads, d).transpose(1, 2)  # (B, kvh, S, d)
                v = a.v_proj(h).view(b, n, s.kv_heads, d).transpose(1, 2)
                q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
                k = torch.cat([past[2 * i], k], dim=2)  # (B, kvh, T, d)
                v = torch.cat([past[2 * i + 1], v], dim=2)
                present += [k, v]
                kr = k.repeat_interleave(rep, dim=1)  # (B, nh, T, d): head h reads kv head h // rep
                vr = v.repeat_interleave(rep, dim=1)
                att = (q @ kr.transpose(-1, -2)) * (d**-0.5) + bias
                y = att.softmax(-1) @ vr  # (B, nh, S, d)
                x = x + a.o_proj(y.transpose(1, 2).reshape(b, n, s.heads * d))
                h = self._rms(x, layer.post_attention_layernorm.weight, s.rms_eps)
                mlp = layer.mlp
                x = x + mlp.down_proj(nn.functional.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
            x = self._rms(x, m.norm.weight, s.rms_eps)
            return (self.hf.lm_head(x), *present)

    return OnnxDecoder


def io_names(spec: Spec) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(spec.layers) for kv in ("key", "value")]
    present = [n.replace("past_key_values.", "present.") for n in past]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def export_onnx(hf: Any, spec: Spec, path: Path) -> Path:
    """Trace `OnnxDecoder` over `hf` to `path` (one file, opset 17, dynamic batch and lengths)."""
    import warnings

    import torch

    decoder = _decoder_class()(hf, spec).eval()
    inputs, outputs = io_names(spec)
    b, s, p = 2, 3, 2  # example shapes; every axis is dynamic
    ids = torch.randint(0, spec.vocab, (b, s), dtype=torch.int64)
    mask = torch.ones((b, p + s), dtype=torch.int64)
    pos = torch.arange(p, p + s, dtype=torch.int64)[None].repeat(b, 1)
    past = [torch.zeros((b, spec.kv_heads, p, spec.head_dim)) for _ in range(2 * spec.layers)]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "seq"},
        "logits": {0: "batch", 1: "seq"},
    }
    for name in inputs[3:]:
        axes[name] = {0: "batch", 2: "past"}
    for name in outputs[1:]:
        axes[name] = {0: "batch", 2: "total"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter (dynamo=False): the same on torch 2.11 (GPU machine) and
        # 2.13 (here), and it needs no onnxscript. It warns that it is deprecated, and the
        # tracer warns about shapes read as Python values; the graph is checked afterwards.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            decoder,
            (ids, mask, pos, *past),
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def write_llm_dir(
    llm_dir: Path, spec: Spec, model: Path, *, precision: str, eos_token_ids: list[int], note: str
) -> Path:
    """llm.json + tokenizer.json beside `model` (linked when possible: the graph is half a GB)."""
    llm_dir.mkdir(parents=True, exist_ok=True)
    target = llm_dir / LLM_MODEL_FILE
    if model.resolve() != target.resolve():
        target.unlink(missing_ok=True)
        try:
            target.hardlink_to(model)
        except OSError:
            import shutil

            shutil.copyfile(model, target)
    write_tokenizer(llm_dir / LLM_TOKENIZER_FILE, spec.vocab)
    inputs, outputs = io_names(spec)
    meta = {
        "format": LLM_FORMAT,
        "source": f"tools.gpu_check: random weights, seed {spec.seed}",
        "architecture": "llama",
        "num_layers": spec.layers,
        "num_kv_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab,
        "max_position_embeddings": spec.max_positions,
        "eos_token_ids": eos_token_ids,
        "pad_token_id": PAD_ID,
        "bos_token_id": 1,
        "prompt_prefix": PROMPT_PREFIX,
        "prompt_suffix": PROMPT_SUFFIX,
        "precision": precision,
        "input_names": inputs,
        "output_names": outputs,
        "logits_to_keep_input": None,
        "speed_test": {"note": note, "spec": asdict(spec)},
    }
    (llm_dir / LLM_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return llm_dir


def parity(hf: Any, model: Path, ids: list[int]) -> dict[str, Any]:
    """The ONNX graph (ORT, CPU) against transformers on one prompt: max |logit diff|, argmax agreement."""
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()  # (S, V)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    n_layers = sum(1 for i in sess.get_inputs() if i.name.endswith(".key"))
    kv = sess.get_inputs()[3].shape[1]
    hd = sess.get_inputs()[3].shape[3]
    feed: dict[str, np.ndarray] = {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        "position_ids": np.arange(len(ids), dtype=np.int64)[None],
    }
    for i in range(n_layers):
        for part in ("key", "value"):
            feed[f"past_key_values.{i}.{part}"] = np.zeros((1, kv, 0, hd), dtype=np.float32)
    got = sess.run(["logits"], feed)[0][0]
    diff = float(np.abs(got - ref).max())
    scale = float(ref.std())  # the logits' spread: fp32 drift grows with it
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
    ok = diff < 1e-3 * max(1.0, scale)
    return {
        "max_abs_logit_diff": diff,
        "logit_std": scale,
        "argmax_agreement": agree,
        "tokens": len(ids),
        "ok": ok,
    }
