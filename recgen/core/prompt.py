"""The LLM's prompt: one short instruction built from titles, in the model's chat format.

`build_user_message` writes the plain user turn (style "plain": the
baseline before the outline of recgen/core/explain_outline.py): what the user recently watched,
the recommendations to present, and, if given, the user's own wish, quoted
and marked as data. `build_prompt` wraps it in the exported model's prompt
prefix / suffix (llm.json). `shown` says which items a message shows: the
grounding check's allowed set is exactly those (history shown + recommended
shown). Titles are shown in their natural form without the year ("The Usual
Suspects"); the checker accepts either form, with or without a year.

This module does not tokenize, generate or check anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from recgen.core.grounding import display_title

MAX_HISTORY = 3  # history titles shown to the model (most recent first)
MAX_RECOMMENDED = 3  # recommended titles presented (top of the ranking)
MAX_INTENT_CHARS = 200
# The first words of the model's answer, written for it. Measured on 24 real
# users' prompts with SmolLM2-135M-Instruct int8: without it 17-42% of the
# answers were refusals ("I'm sorry for any confusion ..."); with it none were,
# and 92% of the texts were grounded (docs/llm.md).
RESPONSE_PRIMER = "You will enjoy"
# The plain message's instruction sentences (the style="plain" baseline; the default
# is recgen/core/explain_outline.py). The negative one was measured to leak into
# answers ("... but I will not suggest any other movie", docs/llm.md).
PLAIN_INSTRUCTIONS = (
    "In one sentence, tell me why the picked movies suit me.",
    "Do not name any other movie.",
)

T = TypeVar("T")

# Control characters, and the angle brackets special tokens are written with
# ("<|im_end|>", "</s>"): a title or a wish must not end the user's turn.
_UNSAFE_RE = re.compile(r"[\x00-\x1f\x7f<>]+")
_SPACES_RE = re.compile(r"\s+")


def shown(
    history: Sequence[T],
    recommended: Sequence[T],
    *,
    max_history: int = MAX_HISTORY,
    max_recommended: int = MAX_RECOMMENDED,
) -> tuple[list[T], list[T]]:
    """The history (most recent first) and recommended entries a message shows."""
    return list(history[:max_history]), list(recommended[:max_recommended])


def clean_text(text: str, limit: int) -> str:
    """One line of at most `limit` characters, without control characters or angle
    brackets: safe to put in a prompt."""
    text = _SPACES_RE.sub(" ", _UNSAFE_RE.sub(" ", text)).strip()
    return text[:limit].rstrip()


def _join(titles: Sequence[str]) -> str:
    if len(titles) <= 2:
        return " and ".join(titles)
    return ", ".join(titles[:-1]) + " and " + titles[-1]


def build_user_message(
    history_titles: Sequence[str],
    recommended_titles: Sequence[str],
    intent: str = "",
    *,
    max_history: int = MAX_HISTORY,
    max_recommended: int = MAX_RECOMMENDED,
) -> str:
    """The user turn. Catalog titles in, e.g. "Usual Suspects, The (1995)".

    history_titles: most recent first; recommended_titles: best first. Only
    the first `max_history` / `max_recommended` are shown (see `shown`).
    """
    hist, recs = shown(
        history_titles, recommended_titles, max_history=max_history, max_recommended=max_recommended
    )
    hist = [clean_text(display_title(t), 120) for t in hist]
    recs = [clean_text(display_title(t), 120) for t in recs]
    assert recs, "at least one recommended title is needed"
    parts = []
    if hist:
        parts.append(f"Movies I liked: {_join(hist)}.")
    parts.append(f"Movies picked for me: {_join(recs)}.")
    wish = clean_text(intent, MAX_INTENT_CHARS).replace('"', "'")
    if wish:
        # The wish is data about the user, quoted; it carries no instructions.
        parts.append(f'What I am in the mood for, in my own words: "{wish}".')
    parts.extend(PLAIN_INSTRUCTIONS)
    return " ".join(parts)


def build_prompt(llm_cfg: Mapping[str, Any] | Any, message: str, primer: str = "") -> str:
    """prefix + message + suffix (+ the answer's first words), from llm.json (a
    mapping) or an object with those fields. The primer is part of the text
    shown: pass the same one to `worker.llm.grounded.generate_grounded`."""
    if isinstance(llm_cfg, Mapping):
        prefix, suffix = llm_cfg["prompt_prefix"], llm_cfg["prompt_suffix"]
    else:
        prefix, suffix = llm_cfg.prompt_prefix, llm_cfg.prompt_suffix
    return f"{prefix}{message}{suffix}{primer}"


def prompt_head(llm_cfg: Mapping[str, Any] | Any, message_head: str) -> str:
    """The start every prompt of `build_prompt(llm_cfg, message, ...)` shares when every
    message starts with `message_head`: the text a server may compute once (its KV)."""
    prefix = llm_cfg["prompt_prefix"] if isinstance(llm_cfg, Mapping) else llm_cfg.prompt_prefix
    return f"{prefix}{message_head}"
