"""A byte-level tokenizer.json of any vocabulary size, built offline (no training, no download).

The worker needs a tokenizer.json beside the graph. The speed-test model has random
weights, so the tokenizer only has to cover every id the model can produce and
encode any prompt: SmolLM2's three special tokens at ids 0-2, the 256 byte-level
symbols (every text encodes, one token per byte), then filler tokens " ab",
" abc", ... (ASCII words, so most generated text is printable) up to `vocab`.
No merges: encoding never produces a filler token, decoding shows each.

This module knows nothing of the model or of timing.
"""

from __future__ import annotations

import itertools
import string
from pathlib import Path

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2
PAD_ID = 2
EOS_ID = 2  # <|im_end|>: the served version's stop token
PROMPT_PREFIX = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\n"
)
PROMPT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


def _filler() -> itertools.chain[str]:
    letters = string.ascii_lowercase
    return itertools.chain.from_iterable(
        ("\u0120" + "".join(t) for t in itertools.product(letters, repeat=n)) for n in range(2, 6)
    )


def build_tokenizer(vocab: int):  # -> tokenizers.Tokenizer
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    assert vocab >= len(SPECIAL) + len(alphabet), f"vocab {vocab} < {len(SPECIAL) + len(alphabet)}"
    table: dict[str, int] = {}
    for tok in itertools.chain(SPECIAL, alphabet, _filler()):
        if len(table) == vocab:
            break
        table.setdefault(tok, len(table))
    tok = Tokenizer(models.BPE(vocab=table, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    assert tok.get_vocab_size() == vocab, (tok.get_vocab_size(), vocab)
    return tok


def write_tokenizer(path: Path, vocab: int) -> Path:
    build_tokenizer(vocab).save(str(path))
    return path
