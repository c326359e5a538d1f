"""Tiny, randomly initialised causal-LM checkpoints for tests (GPT-2, Llama, Qwen2).

Everything is built offline: the tokenizer is a byte-level BPE trained here on a
few catalog-like sentences, so no hub download is ever needed. The checkpoints
are saved with `save_pretrained`, exactly like a user's local HF folder, so
`export_llm(path, ...)` treats them as any other source.
"""

from __future__ import annotations

import logging
from pathlib import Path

LOG = logging.getLogger(__name__)

ARCHITECTURES = ("gpt2", "llama", "qwen2")

# Training text for the tokenizer: short, catalog-shaped sentences so that the
# merges cover the words the tests (and the worker tests) will prompt with.
_CORPUS = [
    "Toy Story (1995) is an Animation|Children's|Comedy film.",
    "Star Wars (1977) is an Action|Adventure|Romance|Sci-Fi|War film.",
    "Raiders of the Lost Ark (1981) is an Action|Adventure film.",
    "The Empire Strikes Back (1980) is an Action|Adventure|Sci-Fi film.",
    "Fargo (1996) is a Crime|Drama|Thriller film.",
    "Casablanca (1942) is a Drama|Romance|War film.",
    "Usual Suspects, The (1995) is a Crime|Thriller film.",
    "I recently watched Heat (1995) and Casino (1995).",
    "Write one short sentence recommending these movies to me.",
    "You will enjoy this movie because you liked the other one.",
    "Recommend a comedy, a drama, a thriller or a horror movie for tonight.",
    "The user liked these items: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
    "Hello! How are you? I am fine, thank you.",
]

# Chat templates. Llama's renders the BOS token itself (as Llama 2/3 templates
# do), Qwen2's is plain ChatML without BOS (as Qwen2 does): both BOS conventions
# get exercised by the export's prompt prefix logic.
_LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '[' + m['role'] + ']: ' + m['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '[assistant]: ' }}{% endif %}"
)
_CHATML_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _special_tokens(arch: str) -> dict[str, str]:
    if arch == "gpt2":
        return {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": "<|endoftext|>"}
    if arch == "llama":
        return {"bos": "<s>", "eos": "</s>", "unk": "<unk>"}
    return {"eos": "<|im_end|>", "pad": "<|endoftext|>", "extra": "<|im_start|>"}


def _build_tokenizer(arch: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _special_tokens(arch)
    special_list = list(dict.fromkeys(specials.values()))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_list,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    if arch == "llama":
        # Like the real Llama tokenizers: encode() prepends BOS.
        bos_id = tok.token_to_id(specials["bos"])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)

    kwargs: dict[str, str] = {"eos_token": specials["eos"]}
    if "bos" in specials:
        kwargs["bos_token"] = specials["bos"]
    if "unk" in specials:
        kwargs["unk_token"] = specials["unk"]
    if "pad" in specials:
        kwargs["pad_token"] = specials["pad"]
    if "extra" in specials:
        kwargs["additional_special_tokens"] = [specials["extra"]]  # type: ignore[assignment]
    # Without model_input_names the fast tokenizer also returns token_type_ids,
    # which causal LMs (and ORTModelForCausalLM.generate) reject.
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_input_names=["input_ids", "attention_mask"], **kwargs
    )
    if arch == "llama":
        hf_tok.chat_template = _LLAMA_TEMPLATE
    elif arch == "qwen2":
        hf_tok.chat_template = _CHATML_TEMPLATE
    return hf_tok


def _build_config(arch: str, tok, *, hidden: int, layers: int, heads: int):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    vocab = len(tok)
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    bos = tok.convert_tokens_to_ids(tok.bos_token) if tok.bos_token else None
    pad = tok.convert_tokens_to_ids(tok.pad_token) if tok.pad_token else None
    # A wide init spreads the logits of a random model, so that greedy argmax has
    # no near-ties that fp32 rounding differences (torch vs ORT) could flip.
    init = 0.2
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab,
            n_positions=256,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            bos_token_id=bos,
            eos_token_id=eos,
            initializer_range=init,
        )
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        # Fewer KV heads than query heads: exercises grouped-query attention.
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=256,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        initializer_range=init,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    return Qwen2Config(**common)


def make_tiny_checkpoint(arch: str, out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random `arch` causal LM + tokenizer to `out_dir` (HF format).

    arch: "gpt2", "llama" or "qwen2". Llama and Qwen2 get 4 query heads and 2 KV
    heads (GQA) and a chat template; Llama's tokenizer prepends BOS, like the real
    ones. Returns `out_dir`.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {ARCHITECTURES}")
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = _build_tokenizer(arch, vocab_size=384)
    config = _build_config(arch, tok, hidden=64, layers=2, heads=4)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=getattr(config, "pad_token_id", None),
    )
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    LOG.info(
        "tiny %s checkpoint (%d params) written to %s",
        arch,
        sum(p.numel() for p in model.parameters()),
        out_dir,
    )
    return out_dir
