"""Grounding: which catalog items does a text name, and may it be shown?

`GroundingChecker` is built once per model version from the catalog titles
(row order = item index). `find_mentions(text)` returns every title the text
names; `check(text, allowed)` rejects a text that names an item outside
`allowed` and gives the prefix that is safe to show; `StreamGuard` does the
same incrementally over a token stream, holding back only what could still
turn out to be (part of) a title.

Matching works on normalized word tokens (NFKD, accents and case folded,
apostrophes dropped, "&" read as "and"), looked up in one flat trie over all
title variants, so a text of n words costs O(n · longest title), whatever the
catalog size. Variants of a catalog title:

* the year "(1995)" is optional in the text and may be wrong: a year in the
  text only narrows same-named items to the one of that year, if there is one;
* "Usual Suspects, The" is also found as "The Usual Suspects" and as
  "Usual Suspects" (articles: English, and the foreign ones MovieLens moves
  to the end: Le, La, Les, L', Il, Das, Der, Die, El, ...);
* an alternate title in parentheses, "Seven (Se7en) (1995)", is found as
  "Seven", as "Se7en" and as both (only for titles that carry a year, where
  the parentheses are MovieLens's "a.k.a." convention).

Titles that are common words. A variant with one content word ("It", "Heat",
"The Game", "Big", "Kids", "1941") is *weak*: it counts only when

1. it is quoted or emphasised ('"It"', '“Heat”', '*Go*'), or
2. a year in parentheses follows it ("It (1990)"), or
3. its content word is capitalised in the text and is not merely starting a
   sentence ("you will love Heat", "the Game"), or it starts a sentence but
   is not one of a few hundred frequent English words ("Fargo is ..." counts,
   "It is ..." / "Kids will ..." do not).

Lowercase "heat", "it", "the game", and numbers without a year or quotes
never count. Titles of two or more content words match in any case. When
in doubt the checker errs towards finding a mention: a false mention costs
one rejected text, a missed one shows an ungrounded title.

This module knows nothing about models, prompts or item ids beyond the
catalog's row order; tokenizing, splitting and varying title text is
recgen/core/titles.py's job (its names stay importable from here).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from recgen.core.titles import (
    TOKEN_RE,
    display_title,
    normalize_word,
    split_title,
    unsuffix_article,
    variants,
    words,
)

__all__ = [
    "Boundary",
    "GroundingChecker",
    "GroundingResult",
    "Mention",
    "StreamGuard",
    "display_title",
    "normalize_word",
    "split_title",
    "unsuffix_article",
    "words",
]

LOG = logging.getLogger(__name__)

Boundary = Literal["sentence", "word"]

# A year right after a mention in the text; and what could still become one.
_YEAR_AFTER_RE = re.compile(r"\s*\(\s*(\d{4})\s*\)")
_PARTIAL_YEAR_RE = re.compile(r"\s*(?:\(\s*\d{0,4}\s*)?")
# Sentence ends: terminal punctuation (and closing quotes) followed by
# whitespace, or a newline. The cut point is after the punctuation.
_SENTENCE_END_RE = re.compile(r"[.!?…]+[\"'”’)\]*_]*(?=\s)|\n")

_OPEN_QUOTES = frozenset("\"'“‘«*_")
_CLOSE_QUOTES = frozenset("\"'”’»*_")
_SENTENCE_PUNCT = frozenset(".!?:;…\n")
# Stripped from the end of a word-boundary cut: dangling openers and commas.
_CUT_STRIP = " \t\r\n\"'“‘«([{*_-–—,;:"

# Frequent English words that start sentences, and one-word MovieLens titles
# that are ordinary sentence openers ("Trust me", "Twisted and dark"): a weak
# title equal to one of these does not count when it merely opens a sentence.
_COMMON_WORDS = frozenset(
    """
    a about above after again against all almost also although always am among an and another
    any anyone anything are around as at away back be because been before being below best
    better between big both but by can cannot could did do does doing done down during each
    either enough even ever every everyone everything few film films for from fun further get
    gets go goes going good great had has have having he her here hers him his how however i
    if in into is it its just kids kind later less let like little lots love many may maybe me
    might more most movie movies much must my never new next no nor not now of off often old on
    once one only or other our out over perfect plus rather really same see seven she should
    since so some something soon still such sure than that the their them then there these they
    this those though three through thus to together too two under until up us very was watch
    we well were what when where whether which while who whom why will with without would yes
    yet you your yours
    after before besides check come enjoy expect finally here imagine instead meanwhile nothing
    ok okay overall picture someone sure think today tomorrow tonight trust try wow
    bound boys careful caught contact crash fall faithful fallen fear fearless fresh giant hate
    heavy innocent loaded mighty mother naked promise reckless ripe safe shine show smoke
    speechless touch twisted unforgettable war wife women
    """.split()
)


@dataclass(frozen=True)
class Mention:
    """One catalog title named by a text.

    item_index: the catalog row named (the first of `candidates`);
    start, end: the span in the text (end includes a "(year)" that follows);
    matched: text[start:end]; candidates: every catalog row this span can
    mean (same-named items; narrowed by the year when the text gives one that
    exists).
    """

    item_index: int
    start: int
    end: int
    matched: str
    candidates: tuple[int, ...] = ()

    def grounded_in(self, allowed: Collection[int]) -> bool:
        return any(c in allowed for c in (self.candidates or (self.item_index,)))


@dataclass(frozen=True)
class GroundingResult:
    ok: bool
    first_bad: Mention | None
    safe_prefix: str
    mentions: tuple[Mention, ...] = ()


@dataclass(frozen=True)
class _Terminal:
    items: tuple[int, ...]  # catalog rows whose variant ends at this trie node
    years: tuple[int | None, ...]  # their years, aligned with items
    weak: bool  # one content word: needs quotes, a year or capitalisation
    content: int  # index of that content word within the variant (weak only)


@dataclass(frozen=True)
class _Token:
    start: int
    end: int
    tid: int  # token id in the checker's vocabulary, -1 when unknown


class GroundingChecker:
    """Finds catalog titles in text; `check` decides whether a text may be shown.

    titles: catalog titles in item-index order. boundary: where a rejected
    text is cut, "sentence" (only whole sentences before the first ungrounded
    mention are kept; streaming then releases sentence by sentence) or "word"
    (everything up to the last word before it).
    """

    def __init__(self, titles: Sequence[str], *, boundary: Boundary = "sentence") -> None:
        assert boundary in ("sentence", "word"), boundary
        self.boundary: Boundary = boundary
        self.n_items = len(titles)
        self.titles = tuple(titles)  # catalog row -> title (worker/llm/constraint.py spells allowed ones)
        self._vocab: dict[str, int] = {}
        # Flat trie: edge key (node << 24 | token id) -> child node; node 0 is the root.
        self._edges: dict[int, int] = {}
        self._n_nodes = 1
        pending: dict[int, list[tuple[int, int | None, bool, int]]] = {}
        for index, title in enumerate(titles):
            name, alias, year = split_title(title)
            names = [name] + ([alias, f"{name} ({alias})"] if alias else [])
            for n in names:
                for toks, weak, content in variants(n):
                    node = self._insert(toks)
                    pending.setdefault(node, []).append((index, year, weak, content))
        self._terminals: dict[int, _Terminal] = {}
        for node, entries in pending.items():
            seen: dict[int, int | None] = {}
            for index, year, _w, _c in entries:
                seen.setdefault(index, year)
            weak_entries = [e for e in entries if e[2]]
            self._terminals[node] = _Terminal(
                items=tuple(seen),
                years=tuple(seen.values()),
                weak=len(weak_entries) == len(entries),
                content=weak_entries[0][3] if weak_entries else 0,
            )
        assert len(self._vocab) < (1 << 24), "vocabulary too large for the trie's edge keys"
        LOG.info(
            "grounding: %d titles, %d trie nodes, %d words", self.n_items, self._n_nodes, len(self._vocab)
        )

    def _insert(self, toks: list[str]) -> int:
        node = 0
        for t in toks:
            tid = self._vocab.setdefault(t, len(self._vocab))
            key = node << 24 | tid
            child = self._edges.get(key)
            if child is None:
                child = self._edges[key] = self._n_nodes
                self._n_nodes += 1
            node = child
        return node

    # -- matching ---------------------------------------------------------

    def find_mentions(self, text: str) -> list[Mention]:
        """Every catalog title named in `text`, left to right, longest match first."""
        return self._scan(text, 0, final=True)[0]

    def check(self, text: str, allowed: Collection[int]) -> GroundingResult:
        """ok when every mention is in `allowed`; else the text before the first bad one."""
        mentions = self.find_mentions(text)
        return self._result(text, mentions, allowed)

    def stream(self, allowed: Collection[int]) -> StreamGuard:
        return StreamGuard(self, allowed)

    def _result(self, text: str, mentions: list[Mention], allowed: Collection[int]) -> GroundingResult:
        bad = next((m for m in mentions if not m.grounded_in(allowed)), None)
        if bad is None:
            return GroundingResult(True, None, text, tuple(mentions))
        return GroundingResult(False, bad, text[: self.cut(text, bad.start)], tuple(mentions))

    def cut(self, text: str, pos: int) -> int:
        """The last clean boundary at or before `pos` (monotone in `pos`)."""
        if self.boundary == "word":
            return len(text[:pos].rstrip(_CUT_STRIP))
        end = 0
        for m in _SENTENCE_END_RE.finditer(text, 0, pos + 1):
            p = m.start() if m.group() == "\n" else m.end()
            if p <= pos:
                end = p
        return end

    def _tokens(self, text: str, pos: int) -> list[_Token]:
        vocab = self._vocab
        return [
            _Token(m.start(), m.end(), vocab.get(normalize_word(m.group()), -1))
            for m in TOKEN_RE.finditer(text, pos)
        ]

    def scan(self, text: str, pos: int, *, final: bool) -> tuple[list[Mention], int]:
        return self._scan(text, pos, final=final)  # public: a decoding constraint resumes like StreamGuard

    def _scan(self, text: str, pos: int, *, final: bool) -> tuple[list[Mention], int]:
        """Mentions from char `pos` on, and the position up to which they are settled.

        With final=False the text may still grow: a walk that reaches the end
        of the text (the tail could be the start of a title), a last word that
        may continue, or a year that may still follow makes the scan stop there;
        the second value is where it stopped (the next scan resumes there).
        """
        toks = self._tokens(text, pos)
        n = len(toks)
        # The last word may still grow: nothing after it yet, or only an apostrophe.
        last_open = not final and n > 0 and text[toks[-1].end :] in ("", "'", "’")
        edges, terminals = self._edges, self._terminals
        mentions: list[Mention] = []
        i = 0
        while i < n:
            node, j = 0, i
            found: list[tuple[int, _Terminal]] = []  # (tokens consumed, terminal)
            while j < n:
                if last_open and j == n - 1:
                    return mentions, toks[i].start  # the last word may still change
                tid = toks[j].tid
                child = edges.get(node << 24 | tid) if tid >= 0 else None
                if child is None:
                    break
                node, j = child, j + 1
                term = terminals.get(node)
                if term is not None:
                    found.append((j, term))
            if j == n and not final:
                return mentions, toks[i].start  # a longer title may still follow
            mention = None
            for k, term in reversed(found):
                start, end = toks[i].start, toks[k - 1].end
                if text.count("(", start, end) > text.count(")", start, end) and text.startswith(")", end):
                    end += 1  # "Seven (Se7en)": close the alternate title
                y = _YEAR_AFTER_RE.match(text, end)
                if y is None and not final and _PARTIAL_YEAR_RE.fullmatch(text, end):
                    return mentions, toks[i].start  # "(19..." may still become a year
                if term.weak and not self._weak_counts(text, toks, i, term, start, end, y):
                    continue
                mention = _mention(text, term, start, end, y)
                break
            if mention is None:
                i += 1
                continue
            mentions.append(mention)
            i += 1
            while i < n and toks[i].start < mention.end:
                i += 1
        # An open last word always stops the loop above, so all of `text` is settled.
        return mentions, len(text)

    @staticmethod
    def _weak_counts(
        text: str,
        toks: list[_Token],
        i: int,
        term: _Terminal,
        start: int,
        end: int,
        year: re.Match[str] | None,
    ) -> bool:
        if year is not None:
            return True
        if start > 0 and text[start - 1] in _OPEN_QUOTES and end < len(text) and text[end] in _CLOSE_QUOTES:
            return True
        word = toks[i + term.content]
        if not text[word.start].isupper():
            return False
        if term.content > 0:  # "the Game": capitalised after an article
            return True
        k = start - 1
        while k >= 0 and text[k] in " \t(\"'“‘«*_[":
            k -= 1
        at_sentence_start = k < 0 or text[k] in _SENTENCE_PUNCT
        return not at_sentence_start or normalize_word(text[word.start : word.end]) not in _COMMON_WORDS


def _mention(text: str, term: _Terminal, start: int, end: int, year: re.Match[str] | None) -> Mention:
    cands = term.items
    if year is not None:
        y = int(year.group(1))
        exact = tuple(it for it, iy in zip(term.items, term.years, strict=True) if iy == y)
        cands = exact or cands
        end = year.end()
    return Mention(cands[0], start, end, text[start:end], cands)


class StreamGuard:
    """Releases streamed text only once it is known to be grounded.

    feed(piece) returns the text that became safe; the tail that could still
    be (the start of) a title, or, with boundary="sentence", the unfinished
    sentence, is held back. After the first ungrounded mention `violation`
    holds it and nothing more is released. finish() releases the rest. The
    concatenation of everything released equals
    `checker.check(full_text, allowed).safe_prefix`.
    """

    def __init__(self, checker: GroundingChecker, allowed: Collection[int]) -> None:
        self.checker = checker
        self.allowed = frozenset(allowed)
        self.violation: Mention | None = None
        self.text = ""  # everything fed so far
        self.released = 0  # chars of `text` released
        self._mentions: list[Mention] = []  # settled mentions
        self._scan_pos = 0  # settled up to here

    @property
    def released_text(self) -> str:
        return self.text[: self.released]

    def feed(self, piece: str) -> str:
        if self.violation is not None:
            return ""
        self.text += piece
        return self._advance(final=False)

    def finish(self) -> str:
        if self.violation is not None:
            return ""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        text = self.text
        new, settled = self.checker._scan(text, self._scan_pos, final=final)
        self._mentions += new
        self._scan_pos = settled
        bad = next((m for m in new if not m.grounded_in(self.allowed)), None)
        if bad is not None:
            self.violation = bad
            limit = self.checker.cut(text, bad.start)
        elif final:
            limit = len(text)
        else:
            limit = self.checker.cut(text, settled)
        if limit <= self.released:
            return ""
        out = text[self.released : limit]
        self.released = limit
        return out
