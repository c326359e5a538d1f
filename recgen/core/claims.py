"""What a shown text may claim: instruction leaks and attribute claims.

`leak_at(text, instructions)` finds the first instruction leak in a text: a
refusal or meta phrase ("I will not suggest", "Do not name", "as an AI"), or
a run of words copied from the prompt's own instructions; it returns where the
shown text must be cut (the start of the clause that holds it), or None.

`attribute_claims(text, mentions, facts, vocabulary)` finds genre/category
words ("horror", "sci-fi", "romantic") and the item each one is said of (the
nearest title mention before it in the same sentence, else after it, else the
last one before); a claim holds when the category is among the item's catalog
categories or the word is in its catalog text. A year ("from 1996") is a claim
too, attached the same way: it holds when it is the item's year (its title's)
or is written in its catalog text. `violations` keeps the ones that do not hold.

`clause_start` and `end_at` place and finish a cut: at a clause boundary,
never inside the part of the text we wrote ourselves (`floor`), ending with a
full stop.

Pure: no model, no tokenizer. Which titles a text names is
recgen/core/grounding.py's; what the catalog holds comes in as `facts`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from recgen.core.grounding import Mention

# Refusals, meta talk and negative instructions repeated back. Case-insensitive.
_LEAK_PATTERNS = (
    r"\b(?:do|does|did) ?n[o']t (?:name|mention|suggest|recommend|list|include|pick)\b",
    r"\bI(?: will|'ll| would|'d| can| must| should| am| 'm|'m)?(?: not|n't| never| unable to| not able to)"
    r" (?:be able to )?(?:suggest|name|mention|recommend|pick|list|include|provide|choose)\b",
    r"\bI won'?t\b",
    r"\b(?:any|no) other (?:movie|film|title|item|product|book|show)s?\b",
    r"\bas an? (?:AI|language model|assistant)\b",
    r"\b(?:AI|language) (?:model|assistant)\b",
    r"\bI(?:'m| am) (?:sorry|not sure|an AI|unable)\b",
    r"\bI (?:apologi[sz]e|cannot|can't)\b",
    r"\b(?:the )?(?:picked|recommended) (?:movies|films|items) (?:suit|for) me\b",
    r"\bsuits? me\b",
    r"\b(?:in|using) (?:the )?(?:facts|one sentence|one or two (?:short )?sentences)\b",
    r"\bin my own words\b",
    r"\bdata, not instructions\b",
)
LEAK_RE = re.compile("|".join(f"(?:{p})" for p in _LEAK_PATTERNS), re.IGNORECASE)
COPY_WORDS = 5  # this many words in a row from an instruction sentence is a copy
_WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_CLAUSE_END = frozenset(".!?;:,—–\n")
_SENTENCE_END_RE = re.compile(r"[.!?…]+(?=\s|$)|\n")
_TRIM = " \t\r\n,;:—–-\"'“‘(["
# A four-digit year standing alone ("from 1996", "(1995)"); decades ("1990s") and longer
# numbers are not matched.
_YEAR_RE = re.compile(r"(?<![\w.,])(1[89]\d\d|20\d\d)(?![\w])")
YEAR = "year"  # Claim.category of a year claim

# Words a text may use for a catalog category, beyond the category's own name
# (lower-cased MovieLens genres). A category of another catalog is found by its name.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "action": ("action", "action-packed"),
    "adventure": ("adventure", "adventures", "adventurous"),
    "animation": ("animation", "animated", "cartoon", "cartoons"),
    "children's": ("children's", "childrens", "kids'", "kids' film"),
    "comedy": ("comedy", "comedies", "comedic", "comedy-drama", "rom-com"),
    "crime": ("crime", "gangster", "heist"),
    "documentary": ("documentary", "documentaries"),
    "drama": ("drama", "dramas", "comedy-drama", "melodrama"),
    "fantasy": ("fantasy", "fantasies"),
    "film-noir": ("film-noir", "film noir", "noir"),
    "horror": ("horror", "slasher"),
    "musical": ("musical", "musicals"),
    "mystery": ("mystery", "mysteries", "whodunit"),
    "romance": ("romance", "romantic", "rom-com", "love story"),
    "sci-fi": ("sci-fi", "scifi", "science fiction", "science-fiction", "sci fi"),
    "thriller": ("thriller", "thrillers"),
    "war": ("war", "wartime"),
    "western": ("western", "westerns"),
}


def _phrase_re(phrases: Iterable[str]) -> str:
    alts = sorted({re.escape(p.lower()).replace(r"\ ", r"[\s-]+") for p in phrases}, key=len, reverse=True)
    return r"(?<![\w-])(?:" + "|".join(alts) + r")(?![\w-])"


def _words(text: str) -> list[tuple[int, str]]:
    return [(m.start(), m.group().lower()) for m in _WORD_RE.finditer(text)]


def leak_at(text: str, instructions: Sequence[str] = (), start: int = 0) -> int | None:
    """Where the first instruction leak at or after `start` begins, or None.

    instructions: the prompt's instruction sentences; COPY_WORDS words in a row
    copied from one of them count as a leak (titles and facts are not instructions
    and must not be passed here)."""
    found = [m.start() for m in LEAK_RE.finditer(text, start)][:1]
    grams: set[tuple[str, ...]] = set()
    for sentence in instructions:
        sw = [w for _, w in _words(sentence)]
        grams |= {tuple(sw[i : i + COPY_WORDS]) for i in range(len(sw) - COPY_WORDS + 1)}
    if grams:
        tw = _words(text)
        for i in range(len(tw) - COPY_WORDS + 1):
            if tw[i][0] >= start and tuple(w for _, w in tw[i : i + COPY_WORDS]) in grams:
                found.append(tw[i][0])
                break
    return min(found) if found else None


def clause_start(text: str, pos: int, floor: int = 0) -> int:
    """The start of the clause holding `pos`: just after the last clause boundary
    (, ; : . ! ? dash, newline) before it, but never before `floor`."""
    i = pos
    while i > floor and text[i - 1] not in _CLAUSE_END:
        i -= 1
    return max(i, floor)


def end_at(text: str, cut: int) -> str:
    """text[:cut] made a finished sentence: trailing separators dropped, a full stop added."""
    out = text[:cut].rstrip(_TRIM)
    if out and out[-1] not in ".!?…。！？":
        out += "."
    return out


def sentence_ends(text: str) -> list[int]:
    """Offsets just after each sentence end in the text."""
    return [m.end() for m in _SENTENCE_END_RE.finditer(text)]


# -- attribute claims ----------------------------------------------------------------


@dataclass(frozen=True)
class ItemClaimFacts:
    """What the catalog says of one item, as the claim check reads it."""

    categories: tuple[str, ...]
    text: str = ""
    year: int | None = None  # the title's year, as recgen/core/titles.py reads it


@dataclass(frozen=True)
class Claim:
    """A category word said of an item. ok: the item's catalog data holds it."""

    start: int
    end: int
    word: str
    category: str  # lower-cased catalog category, or YEAR
    item: int | None  # catalog row it is said of; None: no item named near it
    ok: bool


class Vocabulary:
    """Category words of one catalog: each catalog category by its name and, for the
    MovieLens genres, by the SYNONYMS above. Built once per catalog."""

    def __init__(self, categories: Iterable[str]) -> None:
        self.patterns: list[tuple[str, re.Pattern[str]]] = []
        for cat in sorted({c.lower() for c in categories if c.strip()}):
            phrases = {cat, *SYNONYMS.get(cat, ())}
            self.patterns.append((cat, re.compile(_phrase_re(phrases), re.IGNORECASE)))

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, category) of every category word in the text, in order."""
        out = [(m.start(), m.end(), cat) for cat, p in self.patterns for m in p.finditer(text)]
        return sorted(out)


def _sentence_of(ends: list[int], pos: int) -> int:
    return sum(1 for e in ends if e <= pos)


def _item_of(mentions: Sequence[Mention], facts: Mapping[int, ItemClaimFacts]) -> list[tuple[Mention, int]]:
    """Mentions of items we know facts of, with the row they mean."""
    out = []
    for m in mentions:
        row = next((c for c in (m.candidates or (m.item_index,)) if c in facts), None)
        if row is not None:
            out.append((m, row))
    return out


def attribute_claims(
    text: str,
    mentions: Sequence[Mention],
    facts: Mapping[int, ItemClaimFacts],
    vocabulary: Vocabulary,
) -> list[Claim]:
    """Every category word and year in the text outside a title, with the item it is said of."""
    known = _item_of(mentions, facts)
    ends = sentence_ends(text)
    claims = []
    found = vocabulary.find(text) + [(m.start(), m.end(), YEAR) for m in _YEAR_RE.finditer(text)]
    for start, end, cat in sorted(found):
        if any(m.start <= start < m.end for m in mentions):
            continue  # part of a title ("Star Wars", "The Crying Game")
        sent = _sentence_of(ends, start)
        before = [(m, r) for m, r in known if m.end <= start]
        same_before = [x for x in before if _sentence_of(ends, x[0].start) == sent]
        same_after = [(m, r) for m, r in known if m.start >= end and _sentence_of(ends, m.start) == sent]
        near = same_before or same_after[:1] or before
        pick = near[-1] if near else None
        if pick is None:
            claims.append(Claim(start, end, text[start:end], cat, None, True))
            continue
        f = facts[pick[1]]
        word = text[start:end]
        if cat == YEAR:
            ok = int(word) == f.year or word in f.text
        else:
            ok = cat in {c.lower() for c in f.categories} or word.lower() in f.text.lower()
        claims.append(Claim(start, end, text[start:end], cat, pick[1], ok))
    return claims


def violations(
    text: str,
    mentions: Sequence[Mention],
    facts: Mapping[int, ItemClaimFacts],
    vocabulary: Vocabulary,
) -> list[Claim]:
    """The claims the catalog does not hold."""
    return [c for c in attribute_claims(text, mentions, facts, vocabulary) if not c.ok]
