"""Token-level decoding: a step's logits -> next tokens -> text pieces.

`choose` picks each row's next token: greedy argmax, or temperature / top-p
sampling from the request's own seeded numpy generator, so a request's text
depends on its seed only, never on what else shares the batch.

`IncrementalDecoder` turns a sequence's growing token ids into text pieces.
Decoding token by token breaks byte-level BPE: one character can span
several tokens (the first decodes to "\ufffd"), and decoders that strip a
leading space would glue words together. As text-generation-inference does,
each step decodes a short window twice, ids[prefix:read] and ids[prefix:],
and emits the difference only once it does not end in an incomplete
character; the window then slides to the tokens just emitted. The pieces
concatenate to `tokenizer.decode(ids)` (minus an incomplete final character).

This module knows nothing about batches beyond the arrays it is given, and
does not decide when a sequence stops.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

_INCOMPLETE = "\ufffd"  # what decode() gives for a partial character


def choose(
    logits: np.ndarray, temperature: np.ndarray, top_p: np.ndarray, rngs: list[np.random.Generator]
) -> np.ndarray:
    """(B, V) logits -> (B,) next tokens: argmax, or sampled for rows with temperature > 0.

    rngs: one generator per row (only the sampled rows' are used).
    """
    tokens = logits.argmax(axis=-1).astype(np.int64)
    rows = np.flatnonzero(temperature > 0)
    if rows.size:
        tokens[rows] = sample(logits[rows], temperature[rows], top_p[rows], [rngs[i] for i in rows.tolist()])
    return tokens


def sample(
    logits: np.ndarray, temperature: np.ndarray, top_p: np.ndarray, rngs: list[np.random.Generator]
) -> np.ndarray:
    """(n, V) logits -> (n,) tokens drawn with temperature and nucleus (top-p) filtering."""
    z = logits.astype(np.float64) / temperature[:, None]
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)  # (n, V)
    u = np.array([rng.random() for rng in rngs])  # one draw per row: reproducible per seed
    if np.all(top_p >= 1.0):
        cdf = np.cumsum(p, axis=1)
        return np.minimum((cdf <= u[:, None] * cdf[:, -1:]).sum(axis=1), p.shape[1] - 1)
    order = np.argsort(-p, axis=1, kind="stable")  # (n, V) most likely first
    ps = np.take_along_axis(p, order, axis=1)
    keep = (np.cumsum(ps, axis=1) - ps) < top_p[:, None]  # the most likely always stays
    cdf = np.cumsum(np.where(keep, ps, 0.0), axis=1)
    idx = np.minimum((cdf <= u[:, None] * cdf[:, -1:]).sum(axis=1), p.shape[1] - 1)
    return order[np.arange(len(order)), idx]


class IncrementalDecoder:
    """Per-sequence detokenizer state (generated tokens only, not the prompt)."""

    __slots__ = ("_tok", "_skip", "ids", "prefix_offset", "read_offset")

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the decode window
        self.read_offset = 0  # ids before this were emitted

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is partial)."""
        self.ids.append(token_id)
        return self._emit(final=False)

    def peek(self, token_ids: list[int]) -> str:
        """The text `token_ids` would add after what was emitted (held-back tokens included,
        an incomplete final character dropped); changes nothing."""
        decode = self._tok.decode
        prefix_text = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=self._skip)
        window = self.ids[self.prefix_offset :] + token_ids
        return decode(window, skip_special_tokens=self._skip).rstrip(_INCOMPLETE)[len(prefix_text) :]

    def flush(self) -> str:
        """At the end: whatever complete text is still held back."""
        return self._emit(final=True)

    def _emit(self, *, final: bool) -> str:
        if self.read_offset >= len(self.ids):
            return ""
        decode = self._tok.decode
        prefix_text = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=self._skip)
        new_text = decode(self.ids[self.prefix_offset :], skip_special_tokens=self._skip)
        if final:
            new_text = new_text.rstrip(_INCOMPLETE)
        elif new_text.endswith(_INCOMPLETE):
            return ""
        if len(new_text) <= len(prefix_text):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return new_text[len(prefix_text) :]
