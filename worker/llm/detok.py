"""Incremental detokenization: text pieces from a growing list of token ids.

Decoding token by token breaks byte-level BPE: one character can span
several tokens (the first decodes to "\ufffd"), and decoders that strip a
leading space would glue words together. As text-generation-inference does,
each step decodes a short window twice, ids[prefix:read] and ids[prefix:],
and emits the difference only once it does not end in an incomplete
character; the window then slides to the tokens just emitted. The pieces
concatenate to `tokenizer.decode(ids)` (minus an incomplete final character).

This module does not choose tokens or decide when to stop.
"""

from __future__ import annotations

from tokenizers import Tokenizer

_INCOMPLETE = "\ufffd"


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
