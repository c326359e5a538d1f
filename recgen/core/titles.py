"""Catalog title text: how a MovieLens title is tokenized, split, shown and varied.

`words(text)` gives the normalized tokens titles are matched in (NFKD, accents
and case folded, apostrophes dropped, "&" read as "and"). `split_title` takes
a catalog title apart into name, alternate title and year ("Seven (Se7en)
(1995)"); `unsuffix_article` and `display_title` undo MovieLens's trailing
article ("Usual Suspects, The"); `variants` lists the token sequences a name
may appear as in a text, and which of them are weak (one content word).

This module does no matching and decides nothing: the trie, the rules for
when a weak variant counts and what may be shown are recgen/core/grounding.py's.
"""

from __future__ import annotations

import re
import unicodedata

# A token: a run of letters and digits with inner apostrophes ("Schindler's"
# -> "schindlers"), or "&" (read as "and"). A token can only grow while
# nothing or a lone apostrophe follows it (StreamGuard relies on this).
TOKEN_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|&")
_YEAR_AT_END_RE = re.compile(r"\s*\((\d{4})\)\s*$")
_ALIAS_AT_END_RE = re.compile(r"^(.*\S)\s*\(([^()]+)\)$")
_AKA_RE = re.compile(r"^\s*(?:a\.?k\.?a\.?|aka)\s+", re.IGNORECASE)

# Articles MovieLens moves to the end of a title ("Grand bleu, Le").
_SUFFIX_ARTICLE_RE = re.compile(
    r"^(.*\S),\s*(the|a|an|le|la|les|l'|il|lo|gli|i|das|der|die|den|det|des|el|los|las|"
    r"un|une|una|uno|o|os|as|ta|to|en|et|ett)$",
    re.IGNORECASE,
)
# Leading articles dropped from a title that starts with one: English only,
# since "Die Hard" or "I Shot Andy Warhol" do not start with articles.
_LEADING_ARTICLES = frozenset({"the", "a", "an"})


def normalize_word(word: str) -> str:
    """Case-, accent- and apostrophe-insensitive form of one token."""
    if word == "&":
        return "and"
    word = unicodedata.normalize("NFKD", word)
    word = "".join(c for c in word if not unicodedata.combining(c))
    return word.casefold().replace("'", "").replace("’", "")


def words(text: str) -> list[str]:
    """Normalized tokens of `text` (the unit titles are matched in)."""
    return [normalize_word(m.group()) for m in TOKEN_RE.finditer(text)]


def split_title(title: str) -> tuple[str, str | None, int | None]:
    """'Seven (Se7en) (1995)' -> ('Seven', 'Se7en', 1995); ('Heat', None, None) w/o year."""
    title = title.strip()
    year = None
    m = _YEAR_AT_END_RE.search(title)
    if m and m.start() > 0:
        year = int(m.group(1))
        title = title[: m.start()].strip()
    alias = None
    if year is not None:
        a = _ALIAS_AT_END_RE.match(title)
        if a:
            title, alias = a.group(1).strip(), _AKA_RE.sub("", a.group(2)).strip() or None
    return title, alias, year


def unsuffix_article(name: str) -> tuple[str, str | None]:
    """'Usual Suspects, The' -> ('Usual Suspects', 'The'); no article -> (name, None)."""
    m = _SUFFIX_ARTICLE_RE.match(name)
    if not m:
        return name, None
    return m.group(1).strip(), m.group(2)


def display_title(title: str, *, keep_year: bool = False) -> str:
    """The natural form of a catalog title: 'Usual Suspects, The (1995)' -> 'The Usual Suspects'."""
    name, _alias, year = split_title(title)
    core, article = unsuffix_article(name)
    if article:
        core = f"{article}{core}" if article.endswith("'") else f"{article} {core}"
    if keep_year and year is not None:
        return f"{core} ({year})"
    return core


def variants(name: str) -> list[tuple[list[str], bool, int]]:
    """Token sequences a name may appear as: (tokens, weak, index of the content word)."""
    core, article = unsuffix_article(name)
    out: list[tuple[list[str], bool, int]] = []
    if article:  # "Game, The": as written, "The Game", "Game"
        core_w = words(core)
        art_w = words(article + core) if article.endswith("'") else words(article) + core_w
        weak = len(core_w) == 1
        out += [(words(name), weak, 0), (art_w, weak, len(art_w) - 1), (core_w, weak, 0)]
    else:
        w = words(name)
        if len(w) > 1 and w[0] in _LEADING_ARTICLES:  # "The Game": also "Game"
            weak = len(w) == 2
            out += [(w, weak, 1), (w[1:], weak, 0)]
        else:
            out.append((w, len(w) == 1, 0))
    return [v for v in out if v[0]]
