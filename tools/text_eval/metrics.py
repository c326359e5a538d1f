"""Per-text judgements and their rates over an arm; the definitions are in tools/text_eval/__init__.py.

`score_text` judges one generated text against what its prompt showed; `summarize` turns the
scores of one arm x precision into rates; `distinct_2` and `words` are the repetition and length
measures. Leaks and attribute claims are recgen/core/claims.py's (`ClaimChecks`), the worker's
own definitions, not a second set. Nothing here generates text or knows an arm.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from recgen.core import claims
from recgen.core.grounding import GroundingChecker, Mention
from recgen.core.titles import split_title

COMPLETE = ("eos", "length")  # StopReason values that end a text on its own
INTENT_PREFIX = 5  # a text word refers to an intent word when they share this many first letters
LEAK_SHOWN_WORDS = 6  # words of a leak quoted in the report

_WORD_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_\u3400-\u9fff\uf900-\ufaff]+(?:['’][^\W_]+)*")


def words(text: str) -> list[str]:
    """Lower-case words; each CJK character is a word of its own."""
    return [w.lower() for w in _WORD_RE.findall(text)]


def distinct_2(tokens: Sequence[str]) -> float:
    """Distinct word bigrams / bigrams of one text (1.0 for fewer than two words)."""
    pairs = list(zip(tokens, tokens[1:], strict=False))
    return len(set(pairs)) / len(pairs) if pairs else 1.0


def refers_to_intent(text: str, intent_words: Sequence[str]) -> bool:
    """Some word of the text shares its first INTENT_PREFIX letters (or all, if shorter) with an
    intent word ("comedies" ~ "comedy", "romance" ~ "romantic")."""
    keys = {w[:INTENT_PREFIX] for w in intent_words if w}
    return bool(keys) and any(w[:INTENT_PREFIX] in keys for w in words(text))


def _names(mentions: Sequence[Mention], rows: Sequence[int]) -> bool:
    return any(m.grounded_in(rows) for m in mentions)


@dataclass(frozen=True)
class ClaimChecks:
    """recgen/core/claims.py's leak and attribute-claim checks, bound to one catalog."""

    facts: dict[int, claims.ItemClaimFacts]
    vocabulary: claims.Vocabulary

    @staticmethod
    def build(
        categories: Sequence[Sequence[str]], texts: Sequence[str] = (), titles: Sequence[str] = ()
    ) -> ClaimChecks:
        texts = list(texts) or [""] * len(categories)
        years = [split_title(t)[2] for t in titles] or [None] * len(categories)
        facts = {
            i: claims.ItemClaimFacts(tuple(c), t, y)
            for i, (c, t, y) in enumerate(zip(categories, texts, years, strict=True))
        }
        return ClaimChecks(facts, claims.Vocabulary(c for cs in categories for c in cs))

    def leaks(self, text: str, instructions: Sequence[str], floor: int = 0) -> list[str]:
        """The first leak (claims.leak_at) after the opening we wrote (text[:floor]), as the
        words that start there; [] for none."""
        at = claims.leak_at(text, instructions, floor)
        return [] if at is None else [" ".join(text[at:].split()[:LEAK_SHOWN_WORDS])]

    def violations(self, text: str, mentions: Sequence[Mention]) -> list[str]:
        """Each claim the catalog does not hold, as 'WORD -> TITLE AS NAMED'."""
        out = []
        for c in claims.violations(text, mentions, self.facts, self.vocabulary):
            m = next((m for m in mentions if c.item in (m.candidates or (m.item_index,))), None)
            out.append(f"{c.word} -> {m.matched if m is not None else c.item}")
        return out


@dataclass(frozen=True)
class TextScore:
    """One text's judgements (see the package docstring for each)."""

    case: str
    stop_reason: str
    complete: bool
    grounded: bool
    names_recommended: bool
    names_history: bool
    refers_to_intent: bool
    links: bool
    leaks: list[str] = field(default_factory=list)
    attribute_violations: list[str] = field(default_factory=list)
    words: int = 0
    distinct_2: float = 1.0


def score_text(
    case: str,
    text: str,
    stop_reason: str,
    *,
    history_rows: Sequence[int],
    rec_rows: Sequence[int],
    intent_words: Sequence[str],
    instructions: Sequence[str],
    checker: GroundingChecker,
    checks: ClaimChecks,
    floor: int = 0,
) -> TextScore:
    """text: everything the arm showed; history_rows / rec_rows: the items its prompt could show
    (the grounding check's allowed set is their union); instructions: the prompt's instruction
    sentences (a run of words copied from one is a leak); floor: chars of the opening we wrote,
    which the leak check skips."""
    mentions = checker.find_mentions(text)
    allowed = set(history_rows) | set(rec_rows)
    grounded = stop_reason != "ungrounded" and all(m.grounded_in(allowed) for m in mentions)
    names_rec = _names(mentions, rec_rows)
    names_hist = _names(mentions, history_rows)
    intent = refers_to_intent(text, intent_words)
    toks = words(text)
    return TextScore(
        case=case,
        stop_reason=stop_reason,
        complete=stop_reason in COMPLETE,
        grounded=grounded,
        names_recommended=names_rec,
        names_history=names_hist,
        refers_to_intent=intent,
        links=names_rec and (names_hist or intent),
        leaks=checks.leaks(text, instructions, floor),
        attribute_violations=checks.violations(text, mentions),
        words=len(toks),
        distinct_2=distinct_2(toks),
    )


def _rate(flags: Sequence[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def summarize(scores: Sequence[TextScore]) -> dict[str, Any]:
    """Rates over one arm x precision (each a share of its texts, 0..1)."""
    n = len(scores)
    return {
        "texts": n,
        "complete": _rate([s.complete for s in scores]),
        "grounded": _rate([s.grounded for s in scores]),
        "names_recommended": _rate([s.names_recommended for s in scores]),
        "links": _rate([s.links for s in scores]),
        "leak_texts": sum(bool(s.leaks) for s in scores),
        "attribute_violations": _rate([bool(s.attribute_violations) for s in scores]),
        "distinct_2": round(sum(s.distinct_2 for s in scores) / n, 4) if n else 0.0,
        "mean_words": round(sum(s.words for s in scores) / n, 1) if n else 0.0,
        "stop_reasons": dict(sorted(Counter(s.stop_reason for s in scores).items())),
    }
