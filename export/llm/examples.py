"""Training examples for the explanation text, built from the catalog's own facts.

One `Example` is (prompt, target). The prompt is what the worker serves for the
default "outline" style (worker/explain.py): recgen/core/explain_outline.py's
`build_outline` (the facts of the linked history item and of the
recommendation, the task) and the answer's opening ("Because you liked Heat
(1995), try The Usual Suspects (1995), a crime and thriller film"), wrapped by
recgen/core/prompt.py's `build_prompt` in the exported model's chat format.
The target is the continuation after that opening, the text the model learns
to write: one or two sentences that state only catalog facts the prompt shows
(the categories the item shares with the history item, its further
categories, a phrase of its `text`), in one of many phrasings and orders, so
that the model learns to connect the two items and to stay within the facts
rather than one template.

Pairs are sampled from the catalog (seeded): the recommendation first, then
history items, one sharing a category with it most of the time, as the MF
model's picks usually do; the linked one is chosen as the worker does without
item factors (`nearest_history`: shared categories, then recency). A share of
the examples can be Chinese (the outline's zh prompt; titles as in the
catalog). No interactions are read and nothing is tokenized
(export/llm/finetune.py does that).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recgen.core.explain_outline import ZH, ItemFacts, build_outline, nearest_history
from recgen.core.prompt import build_prompt
from recgen.core.titles import display_title
from recgen.repository import CatalogItem

__all__ = ["Example", "build_examples", "item_phrase"]

# Categories that say nothing about an item (MovieLens's "unknown").
_EMPTY_CATEGORIES = frozenset({"", "unknown", "(no genres listed)"})
_CLAUSE_RE = re.compile(r"[.;:!?\n]")
PHRASE_WORDS = (3, 12)  # a text phrase: its first clause, if 3-12 words
SHARED_HISTORY_P = 0.8  # how often a history item is drawn among those sharing a category
HISTORY_SIZES = (0.1, 0.3, 0.3, 0.3)  # P(0-3 history items); 0: a new user
KIND_CATEGORIES = 2  # categories the opening states (explain_outline.kind_of)


@dataclass(frozen=True)
class Example:
    prompt: str  # the served prompt text, the answer's opening included
    target: str  # the continuation after the opening (no end token)
    history: tuple[int, ...]  # item rows shown, newest first
    recommended: tuple[int, ...]  # item rows; recommended[0] is the one presented
    liked: int | None  # the history row the opening links
    locale: str = "en"


def item_phrase(text: str) -> str:
    """The first clause of an item's text if it is 3-12 words long, else ''."""
    clause = _CLAUSE_RE.split(text.strip(), maxsplit=1)[0].strip()
    n = len(clause.split())
    return clause if PHRASE_WORDS[0] <= n <= PHRASE_WORDS[1] else ""


def _categories(item: CatalogItem) -> list[str]:
    return [c for c in item.categories if c.strip().lower() not in _EMPTY_CATEGORIES]


def _facts(item: CatalogItem) -> ItemFacts:
    return ItemFacts(item.title, tuple(item.categories), item.text)


def _join(words: Sequence[str], sep: str = ", ", last: str = " and ") -> str:
    words = list(words)
    return words[0] if len(words) == 1 else sep.join(words[:-1]) + last + words[-1]


def _a(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


# Continuations of the opening "..., try R (year), a crime and thriller film".
# {H} the linked history title, {S} categories R shares with it, {X} R's further
# categories (past the two the opening states), {P} a phrase of R's text; {aS}
# with an article. A template is used only when its facts exist. Category
# words always follow R or H as the claim check reads them (recgen/core/claims.py):
# never after H unless H has them too.
_EXTRA = [" with a touch of {X}", " that is also {X}", ", with some {X} too", ", also listed as {X}"]
# The link to the history item; "as" / "like {H}" alone claim the opening's categories for H.
_LINK_ALL = [", like {H}.", ", just as {H} is.", ", the same kind of film as {H}."]
_LINK = [
    ". Like {H}, it is {aS} film.",
    ". It shares {S} with {H}.",
    ". Fans of {H} will find the same {S} here.",
    ", and it has the {S} you liked in {H}.",
    ". As in {H}, {S} is at its heart.",
    ", with the {S} of {H}.",
    ". Both it and {H} are {S} films.",
    ", the same kind of {S} film as {H}.",
    ", sharing {S} with {H}.",
]
_PHRASE = [". In short: {P}.", ". {P}.", ". The catalog sums it up: {P}."]
_ZH_LINK = [
    "，和《{H}》一样属于{S}类型。",
    "，它和《{H}》都是{S}电影。",
    "，与《{H}》同属{S}。",
    "。喜欢《{H}》的你，也会喜欢它的{S}元素。",
]
_ZH_PLAIN = ["。", "，值得一看。"]


def _pick(rng: np.random.Generator, templates: Sequence[str], facts: Mapping[str, str]) -> str:
    return templates[int(rng.integers(len(templates)))].format(**facts)


def _target_en(rng: np.random.Generator, rec: CatalogItem, liked: CatalogItem | None) -> str:
    cats = _categories(rec)
    kind = [c.lower() for c in cats[:KIND_CATEGORIES]]
    facts = {"X": _join([c.lower() for c in cats[KIND_CATEGORIES:4]])} if len(cats) > KIND_CATEGORIES else {}
    shared = [c.lower() for c in cats if liked is not None and c in _categories(liked)]
    if liked is not None and shared:
        facts.update(H=display_title(liked.title), S=_join(shared), aS=_a(_join(shared)))
    phrase = item_phrase(rec.text)
    if phrase:
        facts["P"] = phrase[0].upper() + phrase[1:]
    extra = _pick(rng, _EXTRA, facts) if "X" in facts and rng.random() < 0.6 else ""
    if "H" in facts and kind and set(kind) <= set(shared) and not extra and rng.random() < 0.3:
        body = _pick(rng, _LINK_ALL, facts)
    elif "H" in facts:
        body = _pick(rng, _LINK, facts)
    else:
        body = "."
    if "P" in facts and rng.random() < 0.5:  # the phrase before the link: its words are R's
        link = [t for t in _LINK if t.startswith(". ")] if "H" in facts else ["."]
        return extra + _pick(rng, _PHRASE, facts)[:-1] + _pick(rng, link, facts)
    return extra + body


def _target_zh(rng: np.random.Generator, rec: CatalogItem, liked: CatalogItem | None) -> str:
    shared = [c for c in _categories(rec) if liked is not None and c in _categories(liked)]
    if liked is None or not shared:
        return _pick(rng, _ZH_PLAIN, {})
    facts = {"H": _facts(liked).shown_title, "S": "、".join(shared)}
    return _pick(rng, _ZH_LINK, facts)


def build_examples(
    items: Sequence[CatalogItem],
    n: int,
    llm_cfg: Mapping[str, Any],
    seed: int = 0,
    *,
    zh_share: float = 0.0,
) -> list[Example]:
    """n examples over `items`; llm_cfg: llm.json's prompt_prefix / prompt_suffix.
    zh_share: the share of Chinese examples (0: English only)."""
    assert n >= 0 and len(items) >= 2, (n, len(items))
    rng = np.random.default_rng(seed)
    by_category: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        for c in _categories(it):
            by_category[c].append(i)
    described = [i for i, it in enumerate(items) if _categories(it)] or list(range(len(items)))
    out = []
    for _ in range(n):
        r = int(described[rng.integers(len(described))])
        cats = _categories(items[r])
        hist: list[int] = []
        for _ in range(int(rng.choice(4, p=HISTORY_SIZES))):
            if cats and rng.random() < SHARED_HISTORY_P:
                peers = by_category[cats[rng.integers(len(cats))]]
                h = int(peers[rng.integers(len(peers))])
            else:
                h = int(rng.integers(len(items)))
            if h != r and h not in hist:
                hist.append(h)
        others = rng.choice(len(items), size=2, replace=False)
        recs = [r] + [int(i) for i in others if i != r and i not in hist]
        recs = recs[: int(rng.integers(1, 4))]
        hf, rf = [_facts(items[i]) for i in hist], [_facts(items[i]) for i in recs]
        liked = nearest_history(None, None, rf[0], hf)
        locale = ZH if rng.random() < zh_share else "en"
        outline = build_outline(hf, rf, liked=liked, locale=locale)
        prompt = build_prompt(llm_cfg, outline.message, outline.primer)
        liked_item = items[hist[liked]] if liked is not None else None
        make = _target_zh if locale == ZH else _target_en
        target = make(rng, items[r], liked_item)
        out.append(
            Example(
                prompt, target, tuple(hist), tuple(recs), hist[liked] if liked is not None else None, locale
            )
        )
    return out
