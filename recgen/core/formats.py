"""File-format versions and file names of a model version's parts.

The writer (export/) and the reader (worker/) both import them from here,
so neither owns the format: a change is one edit, and a version written by
one release is checked against the same number by the other.
"""

from __future__ import annotations

LLM_FORMAT = 1
"""`<version>/llm/llm.json` "format": the exported decoder, tokenizer and prompt template."""
